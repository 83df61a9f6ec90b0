"""`llmpipe classify-text`: the label and its probability for each text (the book's `classify_review`)."""

import argparse

from transformers import pipeline

from llmpipe import artifacts
from llmpipe.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="artifacts/classify", help="classifier folder (default: %(default)s)")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify")


def main(args: argparse.Namespace) -> None:
    try:
        classifier = pipeline("text-classification", model=args.model, model_kwargs={"use_safetensors": True})
    except (OSError, ValueError) as err:
        raise UserError(f"{args.model}: cannot load a classifier ({str(err).splitlines()[0]}); run `make repro` first") from None
    context = artifacts.context_length(classifier.model)
    for text, result in zip(args.texts, classifier(args.texts, truncation=True, max_length=context)):
        print(f"{result['label']}\t{result['score']:.3f}\t{text}")
