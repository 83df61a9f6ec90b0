"""Stage `lora` (book appendix E, on the instruction task): the `sft` flow with a PEFT `LoraConfig`
passed to `SFTTrainer`; saves the adapter and a merged model."""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from peft import LoraConfig, TaskType

from llmpipe import adapters
from llmpipe.config import library_section
from llmpipe.hub import cards
from llmpipe.stages import tuning


@dataclass
class LoraRecipe(tuning.SftRecipe):
    lora: dict = library_section(LoraConfig)  # peft LoraConfig arguments: r, lora_alpha, lora_dropout, target_modules, ...


def lora_config(recipe: LoraRecipe, model) -> LoraConfig:
    return adapters.lora_config(recipe.lora, TaskType.CAUSAL_LM, model)


def save(trainer, folder: Path, card_for: Callable, load_base: Callable) -> tuple[str, object, bool]:
    """The adapter (registered in MLflow as an adapter) and the merged model, each with its card."""
    adapters.save_adapter_and_merged(trainer, folder / "adapter", folder / "merged", load_base)
    cards.write(folder / "adapter", card := card_for("lora", "adapter"))
    cards.write(folder / "merged", card_for("lora-merged", "merged"))
    return "adapter", card, True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tuning.add_arguments(parser, "lora", LoraRecipe)


def main(args: argparse.Namespace) -> None:
    tuning.run(args, "lora", LoraRecipe, peft_config=lora_config, save=save)
