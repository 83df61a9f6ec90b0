"""Stage `lora` (book appendix E, on the instruction task): the `sft` flow with a PEFT `LoraConfig`
passed to `SFTTrainer`; saves the adapter and a merged model."""

import argparse
from dataclasses import dataclass
from pathlib import Path

from peft import LoraConfig, TaskType

from llmpipe import adapters
from llmpipe.config import library_section
from llmpipe.stages import sft


@dataclass
class LoraRecipe(sft.SftRecipe):
    lora: dict = library_section(LoraConfig)  # peft LoraConfig arguments: r, lora_alpha, lora_dropout, target_modules, ...


def lora_config(recipe: LoraRecipe) -> LoraConfig:
    return adapters.lora_config(recipe.lora, TaskType.CAUSAL_LM)


def save(trainer, tokenizer, folder: Path) -> None:
    adapters.save_adapter_and_merged(trainer.model, tokenizer, folder / "adapter", folder / "merged")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sft.add_arguments(parser, "lora", LoraRecipe)


def main(args: argparse.Namespace) -> None:
    sft.run(args, "lora", LoraRecipe, peft_config=lora_config, save=save)
