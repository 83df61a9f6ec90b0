"""Stage `dpo` (the book's ch7 bonus): preference tuning of the sft model with TRL's `DPOTrainer` on pairs of
a chosen and a rejected answer, every weight or a LoRA adapter (then the reference is the model with the
adapter disabled, not a second copy). Measured before and after on the held-out pairs by DPO's implicit
reward (metrics/preference_scores.py). The split and the prompt format are instructions.yaml's, shared
with sft, lora and evaluate."""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from datasets import Dataset
from peft import LoraConfig, TaskType
from transformers import AutoConfig, AutoModelForCausalLM, set_seed
from trl import DPOConfig, DPOTrainer

from llmpipe import adapters, artifacts, config
from llmpipe.config import at_least, library_section
from llmpipe.data import instructions, preferences
from llmpipe.errors import UserError
from llmpipe.hub import cards
from llmpipe.metrics import preference_scores
from llmpipe.runtime import checkpoints, throughput
from llmpipe.stages import base, training, tuning

REMOVED_IN_TRL_1 = "was removed from DPOConfig in TRL 1.x"


@dataclass
class DpoRecipe:
    RETIRED_KEYS: ClassVar[dict[str, str]] = {  # DPOConfig keys of older TRL (the alignment-handbook's recipes pass them)
        "training.max_prompt_length": f"{REMOVED_IN_TRL_1}; `max_length` bounds prompt and answer together (default: the model's context)",
        "training.max_completion_length": f"{REMOVED_IN_TRL_1}; `max_length` bounds prompt and answer together (default: the model's context)",
        "training.rpo_alpha": f"{REMOVED_IN_TRL_1}; RPO is now `loss_type: [sigmoid, sft]` with `loss_weights: [1.0, <rpo_alpha>]`",
        "training.reference_free": f"{REMOVED_IN_TRL_1}; the reference is the model the stage starts from",
        "training.ref_model_init_kwargs": f"{REMOVED_IN_TRL_1}; the stage loads the reference itself",
    }
    init_from: str | None = None  # Hub id or folder; default: the sft stage's model (--base)
    trainable: Literal["all", "lora"] = "all"  # every weight, or a LoRA adapter (the `lora` section)
    lora: dict = library_section(LoraConfig)  # peft LoraConfig arguments, with trainable: lora
    held_out_pairs: int | None = at_least(1, None)  # validation and test pairs scored, the first of each split (null: all)
    sample_responses: int = at_least(0, 3)  # validation responses generated after training and logged to MLflow
    max_new_tokens: int = at_least(1, 64)  # for those responses
    training: dict = library_section(DPOConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_training_arguments(parser, "dpo", DpoRecipe)
    parser.set_defaults(base="artifacts/sft")


def check_recipe(recipe: DpoRecipe, where: Path) -> None:
    """What DPOConfig would take but this stage cannot: defaults wrong on a CPU left unsaid, a weighting the
    held-out measure does not apply, an adapter section with no adapter."""
    settings = recipe.training
    if "bf16" not in settings or not {"activation_checkpointing", "gradient_checkpointing"} & settings.keys():
        raise UserError(
            f"{where}: `training` must set `bf16` and `activation_checkpointing`: TRL's DPOConfig turns both on unless "
            "told (wrong on a CPU and for a small model); e.g. `bf16: false` and `activation_checkpointing: false`"
        )
    if "ld_alpha" in settings:
        raise UserError(f"{where}: `training.ld_alpha` is not supported: the held-out pairs are scored with whole-answer "
                        "log-probabilities; remove it")
    if recipe.lora and recipe.trainable != "lora":
        raise UserError(f"{where}: a `lora` section with `trainable: {recipe.trainable}`; set `trainable: lora` or remove the section")


def lora_config(recipe: DpoRecipe, model) -> LoraConfig:
    return adapters.lora_config(recipe.lora, TaskType.CAUSAL_LM, model)


def dpo_config(recipe: DpoRecipe, checkpoint_folder: str, job: base.Stage, context: int) -> DPOConfig:
    """The recipe's DPOConfig. By default sequences may fill the model's context and, in one process, the
    reference's log-probabilities are computed once, before training, so that no second copy of the model is
    held. TRL 1.16 caches them in a temporary file of each process for data held in memory, where the other
    processes cannot read rank 0's: under several, the reference stays a model."""
    where = f"{job.recipe_path}: `training"
    limit = recipe.training.get("max_length")
    if limit is not None and limit > context:
        raise UserError(f"{where}.max_length` is {limit}, beyond the model's context of {context} "
                        f"positions; set it to {context} or less (or remove it: the context is the default)")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and recipe.training.get("precompute_ref_log_probs"):
        raise UserError(f"{where}.precompute_ref_log_probs` fails under {processes} processes (TRL 1.16 caches the "
                        "log-probabilities in each process's own temporary folder); remove it")
    return training.arguments(DPOConfig, recipe.training, checkpoint_folder, job, max_length=context,
                              precompute_ref_log_probs=processes == 1)


def datasets(parts: dict[str, list[dict]], prompt_format: str) -> dict[str, Dataset]:
    """TRL's preference format, with each pair's type kept beside it (DPOTrainer drops the column from batches)."""
    return {
        name: Dataset.from_list([preferences.preference_example(entry, prompt_format) | {"pair_type": preferences.pair_type(entry)}
                                 for entry in part])
        for name, part in parts.items()
    }


def trained_pairs(train: Dataset, args: DPOConfig) -> Dataset:
    """The pairs `max_steps` reaches (a random part, by the seed), or all: the reference's log-probabilities
    are precomputed for every pair given."""
    if args.max_steps <= 0:
        return train
    needed = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return train.shuffle(seed=args.seed).select(range(needed)) if needed < len(train) else train


def held_out_scores(trainer: DPOTrainer, held_out: dict[str, Dataset]) -> dict[str, float]:
    """The held-out pairs' scores before (`initial_...`) and after training, from one pass of the trained model."""
    scores = {}
    for name, dataset in held_out.items():
        log_probs = preference_scores.pair_log_probs(trainer, dataset)
        for prefix, measured in (("initial_", preference_scores.before_training(log_probs)), ("", log_probs)):
            scores |= preference_scores.scores(measured, trainer.beta, dataset["pair_type"], f"{prefix}{name}_")
    return scores


def train_loss(log_history: list[dict]) -> float:
    """Trainer's mean loss over the training steps (of this run's last start, when it resumed)."""
    return round(next(entry["train_loss"] for entry in reversed(log_history) if "train_loss" in entry), 4)


def note_cut_pairs(data: dict[str, Dataset], prepared: dict[str, Dataset], limit: int) -> None:
    """Pairs longer than `max_length`: TRL cuts their answers, and drops those whose prompt alone fills it."""
    for name, dataset in prepared.items():
        longest = [len(p) + max(len(c), len(r)) for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
        cut, dropped = sum(length > limit for length in longest), len(data[name]) - len(dataset)
        if dropped == len(data[name]):
            raise UserError(f"every {name} prompt fills the model's context ({limit} tokens): nothing left to score; "
                            "use a model with a longer context or shorter instructions")
        if cut or dropped:
            print(f"dpo: {name}: {cut} of {len(data[name])} pairs longer than {limit} tokens have their answers cut, "
                  f"{dropped} whose prompt fills it are left out", flush=True)


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "dpo", DpoRecipe)
    recipe = job.recipe
    check_recipe(recipe, job.recipe_path)
    task = config.load(instructions.InstructionTask, base.instructions_file(job))
    prompt_format, params = task.prompt_format, job.params
    parts = preferences.splits(params.preference_data, params.instruction_data, task, base.instructions_file(job))
    for name in ("validation", "test"):
        parts[name] = parts[name][: recipe.held_out_pairs]
    data = datasets(parts, prompt_format)
    source = recipe.init_from or args.base
    tokenizer = artifacts.load_tokenizer(source)
    instructions.prepare_tokenizer(tokenizer, prompt_format)
    adapter = recipe.trainable == "lora"
    if adapter:
        model_config = artifacts.load_pretrained(AutoConfig.from_pretrained, source, "model")
        adapters.check_on_skeleton(lambda skeleton: lora_config(recipe, skeleton), AutoModelForCausalLM, model_config, str(job.recipe_path))

    with job.tracker:
        job.log_config(**config.flatten(task, "instructions."))
        model = tuning.load_model(source, tokenizer)
        training_args = dpo_config(recipe, args.checkpoints, job, artifacts.context_length(model))
        set_seed(training_args.seed)
        train = trained_pairs(data["train"], training_args)
        # without precomputed log-probabilities a full fine-tune's reference is a frozen copy (the book's), loaded
        # here: TRL would load it from the model's `name_or_path`
        reference = None if adapter or training_args.precompute_ref_log_probs else tuning.load_model(source, tokenizer)
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=training_args,
            train_dataset=train,
            # the test pairs are prepared with the validation pairs (tokenized, reference scored), but only scored after training
            eval_dataset={"validation": data["validation"], "test": data["test"]},
            processing_class=tokenizer,
            peft_config=lora_config(recipe, model) if adapter else None,
        )
        held_out = {"val": trainer.eval_dataset["validation"], "test": trainer.eval_dataset.pop("test")}
        if trainer.is_world_process_zero():
            note_cut_pairs({"train": train, "validation": data["validation"], "test": data["test"]},
                           {"train": trainer.train_dataset, "validation": held_out["val"], "test": held_out["test"]}, training_args.max_length)
        throughput.add_to(trainer, timer := throughput.Throughput())
        identity = checkpoints.run_identity(recipe, model, artifacts.weights_digest(source), [params.instruction_data, params.preference_data])
        training.train(trainer, args, identity)
        scores = held_out_scores(trainer, held_out)
        metrics = {}
        if trainer.is_world_process_zero():
            metrics = {
                "train_loss": train_loss(trainer.state.log_history),
                **scores,
                "train_pairs": len(train),
                **{f"{name}_pairs": len(dataset) for name, dataset in held_out.items()},
                **artifacts.parameter_counts(trainer.model),
                **timer.summary(trainer),
            }
        # every rank generates (under FSDP each forward needs all of them)
        samples = tuning.validation_responses(trainer.model, tokenizer, parts["validation"][: recipe.sample_responses], recipe, prompt_format)

        def card_for(artifact: str, subfolder: str = ""):
            return job.card(artifact, metrics, Path(args.output) / subfolder, source, prompt_format, model.config.model_type)

        with training.output_folder(args.output, trainer) as staging:
            if adapter:
                adapters.save_adapter_and_merged(trainer, staging / "adapter", staging / "merged", lambda: tuning.load_model(source, tokenizer))
                cards.write(staging / "adapter", card := card_for("dpo-adapter", "adapter"))
                cards.write(staging / "merged", card_for("dpo-merged", "merged"))
            else:
                trainer.save_model(str(staging))  # with the tokenizer (the trainer's processing_class)
                cards.write(staging, card := card_for("dpo"))
        if not trainer.is_world_process_zero():
            return

        job.tracker.log_table(samples, "validation_responses.json")
        job.tracker.register_model(Path(args.output) / ("adapter" if adapter else ""), "text-generation", card, source if adapter else None)
        job.finish(
            metrics,
            f"preference-tuned ({metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} parameters trained) -> "
            f"{Path(args.output)}: held-out reward accuracy val {metrics['initial_val_reward_accuracy']:.2f} -> "
            f"{metrics['val_reward_accuracy']:.2f}, test {metrics['initial_test_reward_accuracy']:.2f} -> "
            f"{metrics['test_reward_accuracy']:.2f}; margin val {metrics['val_margin']:.3f}, test {metrics['test_margin']:.3f}; "
            f"val DPO loss {metrics['initial_val_dpo_loss']:.3f} -> {metrics['val_dpo_loss']:.3f}",
        )
        checkpoints.mark_finished(args.checkpoints)
