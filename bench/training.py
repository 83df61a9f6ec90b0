"""`make bench`: the pretrain stage's training loop (transformers `Trainer`) against a plain PyTorch
loop training the same `GPT2LMHeadModel` on the same batches, in the same process; tokens/s, their
ratio, MFU and peak memory, each the median of several runs; the effect of each fast default (SDPA
attention, fused AdamW, no dataloader workers). With `data_stages`: tokenizer training against
sentencepiece, and the corpus stage on corpora up to a gigabyte. With `judge`: the hf judge one prompt at a
time against the batched judge. Writes bench/results.json."""

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

from bench import data_stages, judge
from llmpipe import config
from llmpipe.data.packing import causal_lm_batch
from llmpipe.runtime import throughput
from llmpipe.stages.corpus import CorpusRecipe
from llmpipe.stages.pretrain import PretrainRecipe
from llmpipe.stages.tokenizer import TokenizerRecipe

GPT2_VOCAB = 50257


def recipe_shape(recipe: Path) -> dict:
    """Model config, context, batch size and precision of a recipe folder's pretrain stage."""
    tokenizer = config.load(TokenizerRecipe, recipe / "tokenizer.yaml")
    corpus = config.load(CorpusRecipe, recipe / "corpus.yaml")
    pretrain = config.load(PretrainRecipe, recipe / "pretrain.yaml")
    vocab = GPT2_VOCAB if tokenizer.init_from == "gpt2" else tokenizer.trainer["vocab_size"]
    training = pretrain.training
    return {
        "config": GPT2Config(vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=vocab - 1, **pretrain.model),
        "context": corpus.context_length,
        "batch": training.get("per_device_train_batch_size", 8),
        "learning_rate": float(training.get("learning_rate", 1e-3)),
        "bf16": bool(training.get("bf16", False)) and torch.cuda.is_available(),
    }


# Trainer settings whose effect the benchmark shows, each against the defaults (SDPA attention, fused
# AdamW, batches collated in the training process).
VARIANTS = {
    "eager_attention": {"attention": "eager"},
    "unfused_adamw": {"optim": "adamw_torch"},
    "two_dataloader_workers": {"workers": 2},
}


def fresh_model(shape: dict, device: torch.device, attention: str = "sdpa") -> GPT2LMHeadModel:
    set_seed(0)
    config = GPT2Config(**{**shape["config"].to_dict(), "attn_implementation": attention})
    return GPT2LMHeadModel(config).to(device)


def plain_loop(shape: dict, blocks: torch.Tensor, warmup: int, device: torch.device) -> float:
    """Seconds for the timed steps of the textbook loop: forward, backward, clip, AdamW step."""
    model = fresh_model(shape, device).train()
    if shape["compile"]:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=shape["learning_rate"], weight_decay=0.1, fused=True)
    batches = blocks.split(shape["batch"])
    for step, batch in enumerate(batches):
        if step == warmup:
            throughput.synchronize()
            started = time.perf_counter()
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=shape["bf16"]):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    throughput.synchronize()
    return time.perf_counter() - started


def trainer_loop(
    shape: dict, blocks: torch.Tensor, warmup: int, device: torch.device,
    attention: str = "sdpa", optim: str = "adamw_torch_fused", workers: int = 0,
) -> float:
    """Seconds for the timed steps under `Trainer` with the pretrain stage's collator."""
    model = fresh_model(shape, device, attention)
    timer = throughput.Throughput(skip_steps=warmup)
    with tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(
            output_dir=scratch, max_steps=len(blocks) // shape["batch"], per_device_train_batch_size=shape["batch"],
            learning_rate=shape["learning_rate"], weight_decay=0.1, max_grad_norm=1.0, bf16=shape["bf16"],
            optim=optim, dataloader_num_workers=workers, report_to=[], save_strategy="no",
            logging_strategy="no", disable_tqdm=True, dataloader_drop_last=True, include_num_input_tokens_seen="all",
            torch_compile=shape["compile"],
            dataloader_pin_memory=device.type == "cuda",
        )
        rows = [{"input_ids": block.tolist()} for block in blocks]
        trainer = Trainer(model=model, args=arguments, train_dataset=rows, data_collator=causal_lm_batch, callbacks=[timer])
        trainer.train()
    return timer.seconds


def training(recipe: Path, steps: int, warmup: int, repeats: int, compile: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = recipe_shape(recipe) | {"compile": compile}
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, shape["config"].vocab_size, ((steps + warmup) * shape["batch"], shape["context"]), generator=generator)
    timed_tokens = steps * shape["batch"] * shape["context"]
    with torch.device("meta"):
        shaped = GPT2LMHeadModel(shape["config"])
    flops_per_token = throughput.training_flops_per_token(shaped, shape["context"])
    parameters = sum(p.numel() for p in shaped.parameters())
    peak, source = throughput.device_peak(device)
    runs = []
    for _ in range(repeats):
        plain = timed_tokens / plain_loop(shape, blocks, warmup, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        library = timed_tokens / trainer_loop(shape, blocks, warmup, device)
        runs.append({"plain_tokens_per_second": round(plain, 1), "trainer_tokens_per_second": round(library, 1)})
    peak_memory = throughput.peak_memory_gb(device)
    plain = statistics.median(run["plain_tokens_per_second"] for run in runs)
    library = statistics.median(run["trainer_tokens_per_second"] for run in runs)
    variants = {}
    for name, settings in VARIANTS.items():
        speed = statistics.median(timed_tokens / trainer_loop(shape, blocks, warmup, device, **settings) for _ in range(repeats))
        variants[name] = {"trainer_tokens_per_second": round(speed, 1), "vs_default": round(speed / library, 3)}
    mfu = (lambda tokens_per_second: round(flops_per_token * tokens_per_second / peak, 4) if peak else None)  # noqa: E731
    return {
        "recipe": str(recipe),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "parameters": parameters,
        "batch": shape["batch"], "context": shape["context"], "bf16": shape["bf16"], "compile": compile, "timed_steps": steps, "repeats": repeats,
        "plain_tokens_per_second": plain,
        "trainer_tokens_per_second": library,
        "trainer_vs_plain": round(library / plain, 3),
        "plain_mfu": mfu(plain),
        "trainer_mfu": mfu(library),
        "flops_per_token": flops_per_token,
        "device_peak_tflops": round(peak / 1e12, 3) if peak else None,
        "device_peak_source": source,
        "peak_memory_gb": round(peak_memory, 3),
        "runs": runs,
        "variants": variants,
    }


def print_tables(results: dict) -> None:
    mfu = lambda value: f"{value:>8.2%}" if value is not None else f"{'n/a':>8}"  # noqa: E731
    if train := results.get("training"):
        print(f"{'training loop':<24}{'tokens/s':>12}{'ratio':>8}{'MFU':>8}   {train['device']}, {train['parameters'] / 1e6:.1f}M parameters")
        print(f"{'plain PyTorch':<24}{train['plain_tokens_per_second']:>12,.0f}{1.0:>8.2f}{mfu(train['plain_mfu'])}")
        print(f"{'Trainer (pretrain)':<24}{train['trainer_tokens_per_second']:>12,.0f}{train['trainer_vs_plain']:>8.2f}{mfu(train['trainer_mfu'])}")
        for name, variant in train["variants"].items():
            print(f"{'  ' + name.replace('_', ' '):<24}{variant['trainer_tokens_per_second']:>12,.0f}{variant['vs_default']:>8.2f}  (vs Trainer defaults)")
        print(f"{'peak memory':<24}{train['peak_memory_gb']:>11.2f}G")
    if tok := results.get("tokenizer_training"):
        print(f"\n{'BPE training':<24}{'MB/s':>12}{'ratio':>8}{'peak':>8}   {tok['text_mb']} MB, vocabulary {tok['vocab_size']}")
        print(f"{'sentencepiece':<24}{tok['sentencepiece_mb_per_second']:>12.2f}{1.0:>8.2f}{tok['sentencepiece_peak_memory_gb']:>7.2f}G")
        print(f"{'tokenizers (stage)':<24}{tok['tokenizers_mb_per_second']:>12.2f}{tok['tokenizers_vs_sentencepiece']:>8.2f}{tok['tokenizers_peak_memory_gb']:>7.2f}G")
    if judged := results.get("judge"):
        print(f"judge ({judged['judge']}), {judged['examples']} answers: {judged['one_at_a_time_examples_per_second']:.2f} judged/s "
              f"one at a time -> {judged['batched_examples_per_second']:.2f} batched ({judged['speedup']}x; "
              f"scores differ by at most {judged['max_score_difference']:.1e})")
    for corpus in results.get("corpus_stage", []):
        print(f"corpus stage, {corpus['text_mb']:>6.0f} MB text: {corpus['tokens_per_second']:>9,.0f} tokens/s, peak memory "
              f"{corpus['peak_anonymous_memory_gb']:.2f} GB anonymous, {corpus['peak_memory_gb']:.2f} GB resident with mapped Arrow files")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="training,tokenizer,corpus,judge", help="what to measure, comma-separated; the others keep their figures in --output (default: %(default)s)")
    parser.add_argument("--recipe", type=Path, default=Path("recipes/tiny"), help="recipe folder whose pretrain model and corpus settings are measured (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the median is reported (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    parser.add_argument("--tokenizer-mb", type=float, default=16, help="generated text both BPE trainers learn from (default: %(default)s)")
    parser.add_argument("--corpus-mb", default="64,1024", help="generated corpus sizes for the corpus stage, comma-separated (default: %(default)s)")
    parser.add_argument("--corpus-repeats", type=int, default=1, help="corpus stage runs per size (default: %(default)s)")
    parser.add_argument("--judge", default="artifacts/judge", help="judge model folder for part `judge` (default: %(default)s)")
    parser.add_argument("--judge-examples", type=int, default=6, help="instructions the judge part scores, 3 answers each (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("bench/results.json"), help="JSON to write (default: %(default)s)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}  # parts not measured keep their figures
    if "training" in parts:
        results["training"] = training(args.recipe, args.steps, args.warmup, args.repeats, args.compile)
    if parts & {"tokenizer", "corpus"}:
        corpus = dataclasses.asdict(config.load(CorpusRecipe, args.recipe / "corpus.yaml"))
        recipe = corpus | {"num_proc": 1}  # one process: its memory is the peak
        vocab = config.load(TokenizerRecipe, args.recipe / "tokenizer.yaml").trainer["vocab_size"]
        corpus_mb = [float(size) for size in args.corpus_mb.split(",")] if "corpus" in parts else []
        data = data_stages.measure(args.tokenizer_mb, vocab, corpus_mb, args.repeats, args.corpus_repeats, recipe)
        results |= data if "tokenizer" in parts else {"corpus_stage": data["corpus_stage"]}
    if "judge" in parts:
        results["judge"] = judge.measure(args.judge, Path("data/instruction-data.json"), args.judge_examples)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
