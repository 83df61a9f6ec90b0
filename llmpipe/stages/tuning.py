"""The instruction-tuning flow that the `sft` and `lora` stages share (book ch7, appendix E): TRL's
`SFTTrainer` on prompt + completion pairs, so only the response (and its EOS) counts in the loss. The
split and the prompt format come from the recipe's `instructions.yaml`, which `evaluate` reads too."""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, set_seed
from trl import SFTConfig, SFTTrainer

from llmpipe import adapters, artifacts, config, generation
from llmpipe.config import at_least, library_section
from llmpipe.data import instructions
from llmpipe.hub import cards
from llmpipe.runtime import checkpoints, throughput
from llmpipe.stages import base, training


@dataclass
class SftRecipe:
    RETIRED_KEYS: ClassVar[dict[str, str]] = dict.fromkeys(
        ("split", "prompt_format"), "is set in instructions.yaml beside this recipe now (one for sft, lora and evaluate); move it there"
    )
    init_from: str | None = None  # Hub id or folder (e.g. gpt2-medium); default: the pretrain stage's model (--base)
    sample_responses: int = at_least(0, 3)  # validation responses generated after training and logged to MLflow
    max_new_tokens: int = at_least(1, 64)  # for those responses
    training: dict = library_section(SFTConfig)


def add_arguments(parser: argparse.ArgumentParser, name: str, schema: type) -> None:
    base.add_training_arguments(parser, name, schema)


def prompt_completion_splits(entries: dict[str, list[dict]], prompt_format: str) -> dict[str, Dataset]:
    return {
        name: Dataset.from_list([instructions.prompt_completion(entry, prompt_format) for entry in part])
        for name, part in entries.items()
    }


def sft_config(recipe: SftRecipe, checkpoint_folder: str, job: base.Stage, context: int) -> SFTConfig:
    """The recipe's SFTConfig; by default the loss is on the completion only and sequences fill the context."""
    return training.arguments(
        SFTConfig, recipe.training, checkpoint_folder, job, max_length=context, completion_only_loss=True, reports_initial_losses=True
    )


def run(
    args: argparse.Namespace,
    name: str,
    schema: type,
    peft_config: Callable | None = None,
    save: Callable[[SFTTrainer, Path, Callable, Callable], tuple[str, object, bool]] | None = None,
) -> None:
    """The instruction-tuning flow; `peft_config(recipe, model)` adds an adapter, `save(trainer, folder, card_for,
    load_base)` writes the result with its cards (default: the fine-tuned model) and returns what MLflow
    registers: (subfolder, its card, whether it is an adapter)."""
    job = base.begin(args, name, schema)
    recipe = job.recipe
    if peft_config is not None:  # the merged model is rebuilt from the base: tokens SFTTrainer adds would be missing
        base.reject_owned(recipe.training, ("chat_template_path", "eos_token"), f"{job.recipe_path}: `training",
                          "instructions.yaml's prompt_format and the base model's tokenizer for an adapter")
    entries, task = base.instruction_splits(job)
    prompt_format = task.prompt_format
    data = prompt_completion_splits(entries, prompt_format)
    source = recipe.init_from or args.base
    tokenizer = artifacts.load_tokenizer(source)
    instructions.prepare_tokenizer(tokenizer, prompt_format)
    if peft_config is not None:
        model_config = artifacts.load_pretrained(AutoConfig.from_pretrained, source, "model")
        adapters.check_on_skeleton(lambda skeleton: peft_config(recipe, skeleton), AutoModelForCausalLM, model_config, str(job.recipe_path))

    with job.tracker:
        job.log_config(**config.flatten(task, "instructions."))
        model = load_model(source, tokenizer)
        training_args = sft_config(recipe, args.checkpoints, job, artifacts.context_length(model))
        set_seed(training_args.seed)
        trainer = SFTTrainer(
            model=model,
            args=training_args,
            train_dataset=data["train"],
            eval_dataset={"train": training.train_probe(data["train"], len(data["validation"])), "validation": data["validation"]},
            processing_class=tokenizer,
            peft_config=peft_config(recipe, model) if peft_config else None,
        )
        throughput.add_to(trainer, timer := throughput.Throughput())
        training.train(trainer, args, checkpoints.run_identity(recipe, model, artifacts.weights_digest(source), [job.params.instruction_data]))
        final = trainer.evaluate()
        metrics = {}
        if trainer.is_world_process_zero():  # rank 0 reports (the other ranks would measure the CPU peak against it)
            metrics = {
                **training.loss_metrics(training.initial_losses(trainer.state.log_history), final),
                "train_examples": len(data["train"]),
                **artifacts.parameter_counts(trainer.model),
                **timer.summary(trainer),
            }
        # every rank generates (under FSDP each forward needs all of them)
        samples = validation_responses(trainer.model, tokenizer, entries["validation"][: recipe.sample_responses], recipe, prompt_format)

        def card_for(artifact: str, subfolder: str = ""):
            return job.card(artifact, metrics, Path(args.output) / subfolder, source, prompt_format, model.config.model_type)

        with training.output_folder(args.output, trainer) as staging:
            registered = (save or save_model)(trainer, staging, card_for, lambda: load_model(source, tokenizer))
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


def load_model(source: str, tokenizer) -> PreTrainedModel:
    """The model to tune, generating until the tokenizer's end of sequence."""
    model = artifacts.load_causal_lm(source)
    artifacts.check_vocabulary(model, tokenizer, source)
    model.generation_config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.config.pad_token_id = tokenizer.pad_token_id  # as SFTTrainer sets it: the tuned and merged folders agree
    return model


def save_model(trainer: SFTTrainer, folder: Path, card_for: Callable, load_base: Callable) -> tuple[str, object, bool]:
    trainer.save_model(str(folder))  # with the tokenizer (the trainer's processing_class)
    cards.write(folder, card := card_for("sft"))
    return "", card, False


def validation_responses(model: PreTrainedModel, tokenizer, entries: list[dict], recipe: SftRecipe, prompt_format: str) -> dict[str, list]:
    prompts = [instructions.prompt_text(entry, prompt_format, tokenizer) for entry in entries]
    settings = generation.decoding(tokenizer, generation.Decoding(recipe.max_new_tokens))
    answers = generation.generate_responses(model, tokenizer, prompts, settings, prompt_format, len(prompts) or 1)
    return {"instruction": prompts, "reference": [instructions.reference(e) for e in entries], "response": answers}
