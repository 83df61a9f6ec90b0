"""Stage `sft` (book ch7): instruction fine-tuning with TRL's `SFTTrainer` on prompt + completion pairs,
so only the response (and its EOS) counts in the loss. The `lora` stage runs the same flow with a
PEFT adapter."""

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from datasets import Dataset
from transformers import PreTrainedModel, set_seed
from trl import SFTConfig, SFTTrainer

from llmpipe import artifacts, cards, checkpoints, generate, instructions, responses, stage, throughput
from llmpipe.config import at_least, library_section


@dataclass
class SftRecipe:
    init_from: str | None = None  # Hub id or folder (e.g. gpt2-medium); default: the pretrain stage's model (--base)
    prompt_format: Literal["alpaca", "chat"] = "alpaca"  # chat: the tokenizer's chat template (a minimal one if it has none)
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.85, "test": 0.1, "validation": 0.05})
    sample_responses: int = at_least(0, 3)  # validation responses generated after training and logged to MLflow
    max_new_tokens: int = at_least(1, 64)  # for those responses
    training: dict = library_section(SFTConfig)


def add_arguments(parser: argparse.ArgumentParser, name: str = "sft", schema: type = SftRecipe) -> None:
    stage.add_training_arguments(parser, name, schema)


def prompt_completion_splits(entries: dict[str, list[dict]], prompt_format: str) -> dict[str, Dataset]:
    return {
        name: Dataset.from_list([instructions.prompt_completion(entry, prompt_format) for entry in part])
        for name, part in entries.items()
    }


def sft_config(recipe: SftRecipe, checkpoint_folder: str, job: stage.Stage, context: int) -> SFTConfig:
    """The recipe's SFTConfig; by default the loss is on the completion only and sequences fill the context."""
    return stage.training_arguments(
        SFTConfig, recipe.training, checkpoint_folder, job, max_length=context, completion_only_loss=True, eval_on_start=True
    )


def main(args: argparse.Namespace) -> None:
    run(args, "sft", SftRecipe)


def run(
    args: argparse.Namespace,
    name: str,
    schema: type,
    peft_config: Callable | None = None,
    save: Callable[[SFTTrainer, object, Path, Callable], tuple[str, object, bool]] | None = None,
) -> None:
    """The instruction-tuning flow; `peft_config(recipe)` adds an adapter, `save(trainer, tokenizer, folder,
    card_for)` writes the result with its cards (default: the fine-tuned model) and returns what MLflow
    registers: (subfolder, its card, whether it is an adapter)."""
    job = stage.begin(args, name, schema)
    recipe = job.recipe
    entries = instructions.split(instructions.load(job.params.instruction_data), recipe.split, job.recipe_path)
    data = prompt_completion_splits(entries, recipe.prompt_format)
    source = recipe.init_from or args.base
    tokenizer = artifacts.load_tokenizer(source)
    instructions.prepare_tokenizer(tokenizer, recipe.prompt_format)

    with job.tracker:
        job.log_config()
        model = artifacts.load_causal_lm(source)
        artifacts.check_vocabulary(model, tokenizer, source)
        model.generation_config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        training = sft_config(recipe, args.checkpoints, job, artifacts.context_length(model))
        set_seed(training.seed)
        trainer = SFTTrainer(
            model=model,
            args=training,
            train_dataset=data["train"],
            eval_dataset={"train": stage.train_probe(data["train"], len(data["validation"])), "validation": data["validation"]},
            processing_class=tokenizer,
            peft_config=peft_config(recipe) if peft_config else None,
            callbacks=[timer := throughput.Throughput()],
        )
        stage.train(trainer, args, checkpoints.run_identity(recipe, model, [job.params.instruction_data]))
        final = trainer.evaluate()
        metrics, samples = {}, []
        if trainer.is_world_process_zero():  # rank 0 reports (the other ranks would measure the CPU peak against it)
            metrics = {
                **stage.loss_metrics(stage.initial_losses(trainer.state.log_history), final),
                "train_examples": len(data["train"]),
                **artifacts.parameter_counts(trainer.model),
                **timer.summary(trainer),
            }
            # before a LoRA save merges the adapter into the weights
            samples = validation_responses(trainer.model, tokenizer, entries["validation"][: recipe.sample_responses], recipe)

        def card_for(artifact: str, subfolder: str = ""):
            return job.card(artifact, metrics, Path(args.output) / subfolder, source)

        with stage.output_folder(args.output, trainer) as staging:
            registered = (save or save_model)(trainer, tokenizer, staging, card_for)
        if not trainer.is_world_process_zero():
            return

        job.tracker.log_table(samples, "validation_responses.json")
        subfolder, card, is_adapter = registered
        job.tracker.register_model(Path(args.output) / subfolder, "text-generation", card, source if is_adapter else None)
        job.finish(
            metrics,
            f"instruction-tuned ({metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} "
            f"parameters trained) -> {Path(args.output)}: "
            f"val loss {metrics['initial_val_loss']:.3f} -> {metrics['val_loss']:.3f}",
        )
        checkpoints.mark_finished(args.checkpoints)


def save_model(trainer: SFTTrainer, tokenizer, folder: Path, card_for: Callable) -> tuple[str, object, bool]:
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(str(folder))
    cards.write(folder, card := card_for("sft"))
    return "", card, False


def validation_responses(model: PreTrainedModel, tokenizer, entries: list[dict], recipe: SftRecipe) -> dict[str, list]:
    prompts = [instructions.prompt_text(entry, recipe.prompt_format, tokenizer) for entry in entries]
    settings = generate.decoding(tokenizer, recipe.max_new_tokens)
    answers = responses.generate_responses(model, tokenizer, prompts, settings, recipe.prompt_format, len(prompts) or 1)
    return {"instruction": prompts, "reference": [instructions.reference(e) for e in entries], "response": answers}
