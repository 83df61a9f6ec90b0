"""Stage `pretrain` (book ch4-5, appendix D): GPT-2 from `GPT2Config` (or `init_from` weights), trained by
`Trainer` under `accelerate launch`: AdamW, warmup then cosine decay, gradient clipping, periodic
evaluation of train and validation loss, checkpoints, a fixed seed. With `score_only` (book ch5.5), the
`init_from` weights are loaded as they are and only scored on the corpus."""

import argparse
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
from datasets import DatasetDict, load_from_disk
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from llmpipe import artifacts, generation
from llmpipe.config import at_least, library_section
from llmpipe.data import packing
from llmpipe.errors import UserError
from llmpipe.hub import cards
from llmpipe.runtime import atomic, checkpoints, mixed_precision, throughput
from llmpipe.stages import base, training

SET_FROM_TOKENIZER = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass
class PretrainRecipe:
    init_from: str | None = None  # Hub id or folder (e.g. gpt2): continue from those weights; `model` must be empty
    score_only: bool = False  # book ch5.5: score the init_from weights as they are (loss, perplexity, a sample), no training
    model: dict = library_section(GPT2Config)
    # rows added to the embedding (never a token) so the vocabulary is a multiple of this: tensor-core
    # friendly shapes for the output layer (nanoGPT and llm.c pad GPT-2's 50,257 to 50,304 with 64)
    pad_to_multiple_of: int | None = at_least(1, None)
    training: dict = library_section(TrainingArguments)
    train_eval_blocks: int | None = at_least(1, None)  # train blocks scored beside validation at each evaluation; default: as many as validation
    sample_prompt: str = "Every effort moves you"  # continued greedily after training, logged
    sample_max_new_tokens: int = at_least(1, 40)


SIZES = ("n_layer", "n_head", "n_embd", "n_positions", "n_inner")


def check_recipe(recipe: PretrainRecipe, source: Path) -> None:
    base.reject_owned(recipe.model, SET_FROM_TOKENIZER, f"{source}: `model", "the tokenizer")
    if recipe.score_only and not recipe.init_from:
        raise UserError(f"{source}: `score_only: true` scores pretrained weights: set `init_from` (a Hub id or a model folder)")
    if recipe.init_from and recipe.model:
        raise UserError(f"{source}: `model` must be empty with `init_from` (the architecture comes from {recipe.init_from})")
    for key in SIZES:  # GPT2Config takes any number; a model with -1 layers trains, then fails at its sample
        if isinstance(recipe.model.get(key), int) and recipe.model[key] < 1:
            raise UserError(f"{source}: `model.{key}` must be at least 1 (got {recipe.model[key]})")
    n_embd, n_head = recipe.model.get("n_embd", 768), recipe.model.get("n_head", 12)
    if n_embd % n_head:
        raise UserError(f"{source}: `model.n_embd` ({n_embd}) must be divisible by `model.n_head` ({n_head})")


def build_model(recipe: PretrainRecipe, tokenizer, context_length: int, source: Path) -> PreTrainedModel:
    if recipe.init_from:
        model = artifacts.load_causal_lm(recipe.init_from)
    else:
        settings = {"vocab_size": len(tokenizer), **recipe.model}
        # no pad_token_id on the config: blocks are full, and with one transformers checks every eager
        # forward's inputs for padding, a GPU sync (generation takes it from the generation config)
        settings |= {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        model = GPT2LMHeadModel(GPT2Config(**settings))
    if recipe.pad_to_multiple_of:
        model.resize_token_embeddings(pad_to_multiple_of=recipe.pad_to_multiple_of, mean_resizing=False)
    if model.config.vocab_size < len(tokenizer):
        raise UserError(f"the model's vocab_size ({model.config.vocab_size}) is smaller than the tokenizer's ({len(tokenizer)})")
    if recipe.init_from and artifacts.load_tokenizer(recipe.init_from).get_vocab() != tokenizer.get_vocab():
        raise UserError(
            f"{source}: the tokenizer stage's vocabulary is not {recipe.init_from}'s; set the same "
            f"`init_from: {recipe.init_from}` in the tokenizer recipe so token ids mean what the weights learned"
        )
    if artifacts.context_length(model) < context_length:
        raise UserError(
            f"{source}: the corpus blocks have {context_length} tokens but the model's n_positions is "
            f"{artifacts.context_length(model)}; raise `model.n_positions` or lower the corpus context_length"
        )
    model.generation_config.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def loss_curve(initial: dict, log_history: list[dict], tokens_per_step: int) -> str:
    """plots/pretrain.csv: one row per evaluation, train and validation loss side by side (the book's plot)."""
    by_step = {0: initial}
    for entry in log_history:  # Trainer logs each eval data set as its own entry
        if any(key.startswith("eval_") and key.endswith("_loss") for key in entry):
            by_step.setdefault(entry["step"], {}).update(entry)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["step", "tokens_seen", "train_loss", "val_loss"])
    for step, row in sorted(by_step.items()):
        writer.writerow([step, step * tokens_per_step, round(row["eval_train_loss"], 5), round(row["eval_validation_loss"], 5)])
    return out.getvalue()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_training_arguments(parser, "pretrain", PretrainRecipe, base=False)
    parser.add_argument("--tokenizer", default="artifacts/tokenizer", help="tokenizer folder (default: %(default)s)")
    parser.add_argument("--corpus", default="artifacts/corpus", help="packed corpus folder (default: %(default)s)")
    parser.add_argument("--plots", default="plots/pretrain.csv", help="loss curves CSV (default: %(default)s)")


def check_token_ids(corpus: DatasetDict, tokenizer, corpus_path: str, tokenizer_path: str) -> None:
    """A corpus packed with another tokenizer holds ids the model's embedding would index past (one pass
    over the memory-mapped Arrow column, no Python loop)."""
    largest = max(pc.max(pc.list_flatten(blocks.data.column("input_ids"))).as_py() for blocks in corpus.values())
    if largest >= len(tokenizer):
        raise UserError(
            f"{corpus_path}: holds token id {largest}, beyond the {len(tokenizer)}-token vocabulary of {tokenizer_path}; "
            "it was packed with another tokenizer: run `llmpipe corpus` with this one (`dvc repro` does)"
        )


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "pretrain", PretrainRecipe)
    recipe = job.recipe
    check_recipe(recipe, job.recipe_path)
    tokenizer = artifacts.load_tokenizer(args.tokenizer)
    try:
        corpus: DatasetDict = load_from_disk(args.corpus)
    except FileNotFoundError:
        raise UserError(f"{args.corpus}: no packed corpus here; run `llmpipe corpus` first") from None
    check_token_ids(corpus, tokenizer, args.corpus, args.tokenizer)
    context_length = len(corpus["train"][0]["input_ids"])
    probe_size = len(corpus["validation"]) if recipe.train_eval_blocks is None else recipe.train_eval_blocks
    train_eval = training.train_probe(corpus["train"], probe_size)

    with job.tracker:
        job.log_config()
        training_args = training.arguments(  # throughput.Throughput counts the tokens: blocks are full
            TrainingArguments, recipe.training, args.checkpoints, job, reports_initial_losses=True, include_num_input_tokens_seen="no",
        )
        set_seed(training_args.seed)
        model = build_model(recipe, tokenizer, context_length, job.recipe_path)
        generation.check_prompt(model, tokenizer, recipe.sample_prompt, recipe.sample_max_new_tokens,
                                f"{job.recipe_path}: `sample_prompt`, `sample_max_new_tokens`: ")
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=corpus["train"],
            eval_dataset={"train": train_eval, "validation": corpus["validation"]},
            data_collator=packing.causal_lm_batch,
            callbacks=[mixed_precision.HalfPrecisionOutputs()],  # only the loss is read: no fp32 copy of the logits
        )
        throughput.add_to(trainer, timer := throughput.Throughput(sequence_length=context_length))
        if not recipe.score_only:
            start = artifacts.weights_digest(recipe.init_from) if recipe.init_from else None
            identity = checkpoints.run_identity(recipe, model, start, [f["filename"] for f in corpus["train"].cache_files])
            training.train(trainer, args, identity)
        final = trainer.evaluate()  # with score_only, at step 0: the initial losses too
        initial = training.initial_losses(trainer.state.log_history)
        metrics = {}
        if trainer.is_world_process_zero():  # rank 0 reports (the other ranks would measure the CPU peak against it)
            metrics = {
                **training.loss_metrics(initial, final),
                "val_perplexity": round(math.exp(final["eval_validation_loss"]), 2),
                "parameters": model.num_parameters(),
                "steps": trainer.state.global_step,
                "train_tokens": trainer.state.num_input_tokens_seen,
                **({} if recipe.score_only else timer.summary(trainer)),
            }
        with training.output_folder(args.output, trainer) as staging:
            trainer.save_model(str(staging))
            tokenizer.save_pretrained(str(staging))
            cards.write(staging, card := job.card("pretrain", metrics, args.output, recipe.init_from, model_type=model.config.model_type))
        model.eval()  # every rank generates: under FSDP each forward needs all of them
        greedy = generation.decoding(tokenizer, generation.Decoding(recipe.sample_max_new_tokens))
        sample = generation.continue_text(model, tokenizer, recipe.sample_prompt, greedy)
        if not trainer.is_world_process_zero():
            return

        tokens_per_step = (training_args.train_batch_size * training_args.gradient_accumulation_steps
                           * training_args.world_size * context_length)
        atomic.write_text(args.plots, loss_curve(initial, trainer.state.log_history, tokens_per_step))
        job.tracker.log_text(f"{recipe.sample_prompt}{sample}\n", "sample.txt")
        job.tracker.log_artifact(args.plots, "plots")
        job.tracker.register_model(args.output, "text-generation", card)
        if recipe.score_only:
            trained, losses = "scored as it is", f"val loss {metrics['val_loss']:.3f}"
        else:
            trained = f"{metrics['tokens_per_second']:.0f} tokens/s{throughput.mfu_text(metrics)}"
            losses = f"val loss {metrics['initial_val_loss']:.3f} -> {metrics['val_loss']:.3f}"
        job.finish(
            metrics,
            f"{metrics['parameters'] / 1e6:.2f}M-parameter {model.config.model_type} -> {Path(args.output)}: {trained}, {losses} "
            f"(perplexity {metrics['val_perplexity']:.1f}); sample: {sample.strip()[:60]!r}",
        )
        checkpoints.mark_finished(args.checkpoints)
