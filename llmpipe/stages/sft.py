"""Stage `sft` (book ch7): instruction fine-tuning of every weight, the loss on the responses only."""

import argparse

from llmpipe.stages import tuning
from llmpipe.stages.tuning import SftRecipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tuning.add_arguments(parser, "sft", SftRecipe)


def main(args: argparse.Namespace) -> None:
    tuning.run(args, "sft", SftRecipe)
