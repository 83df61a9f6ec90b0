"""`llmpipe classify-text`: the label and its probability for each text (the book's `classify_review`)."""

import argparse
from pathlib import Path

from peft import PeftConfig, TaskType
from transformers import Pipeline, pipeline

from llmpipe import adapters, artifacts
from llmpipe.data import spam
from llmpipe.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="artifacts/classify", help="classifier folder (default: %(default)s)")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify")


def load_classifier(folder: str) -> Pipeline:
    """The spam classifier in `folder` as a text-classification pipeline: the classify stage's folder, an
    adaptation method's, or an adapter alone (prompt or p-tuning) on the base it names."""
    if (Path(folder) / "adapter_config.json").is_file():
        adapter = PeftConfig.from_pretrained(folder)
        if adapter.task_type != TaskType.SEQ_CLS:
            raise UserError(f"{folder}: a PEFT adapter for {adapter.task_type}, not a classifier: point --model at the "
                            "classify stage's folder (artifacts/classify) or an adaptation method's (artifacts/adaptation/<method>)")
        model = artifacts.load_for_task(folder, "text-classification", adapter.base_model_name_or_path, spam.LABELS)
    else:
        model = artifacts.load_for_task(folder, "text-classification")
    if set(model.config.id2label.values()) != set(spam.LABELS):
        raise UserError(f"{folder}: labels {sorted(model.config.id2label.values())}, not {'/'.join(spam.LABELS)}: "
                        "point --model at the classify stage's folder (artifacts/classify)")
    return pipeline("text-classification", model=model, tokenizer=artifacts.load_tokenizer(folder))


def main(args: argparse.Namespace) -> None:
    if empty := [i for i, text in enumerate(args.texts, 1) if not text.strip()]:
        raise UserError(f"text {empty[0]} is empty; give each TEXT some words")
    classifier = load_classifier(args.model)
    for text, result in zip(args.texts, classifier(args.texts, truncation=True, max_length=adapters.text_positions(classifier.model))):
        print(f"{result['label']}\t{result['score']:.3f}\t{text}")
