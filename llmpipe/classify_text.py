"""`llmpipe classify-text`: the label and its probability for each text (the book's `classify_review`)."""

import argparse

from transformers import pipeline

from llmpipe import artifacts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="artifacts/classify", help="classifier folder (default: %(default)s)")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify")


def main(args: argparse.Namespace) -> None:
    classifier = artifacts.load_pretrained(
        lambda source: pipeline("text-classification", model=source, model_kwargs={"use_safetensors": True}),
        args.model, "classifier",
    )
    context = artifacts.context_length(classifier.model)
    for text, result in zip(args.texts, classifier(args.texts, truncation=True, max_length=context)):
        print(f"{result['label']}\t{result['score']:.3f}\t{text}")
