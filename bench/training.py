"""`make bench`: the pretrain stage's training loop (transformers `Trainer`, with the stage's defaults and
its Throughput callback) against a plain PyTorch loop training the same `GPT2LMHeadModel` on the same
batches, in the same process, alike in all but the framework: the same rows through the same collator
and DataLoader settings, the same loss call and learning-rate schedule, no KV cache, the loss and gradient
norm read back at the same logging steps, both compiled or neither. Tokens/s by wall clock over the same steps, their ratio, MFU and
peak memory, each the median of several runs; then each fast default against its alternative under Trainer,
back to back in each run (variants).
With `host_reads`: the tensor values each loop reads back to the host (a GPU sync each), by call site.
With `overhead`: each loop's milliseconds a step on a model so small that a step is almost all host work,
and the Python functions whose own time differs most between the loops.
With `profile`: a step's time in each loop inside and outside the device's operations, and the operations
whose time differs most between the loops.
With `data_stages`: tokenizer training against sentencepiece, and the corpus stage on corpora up to a
gigabyte. With `judge`: the hf judge one prompt at a time against the batched judge, under each reading. Writes
bench/results.json."""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import accelerate
import datasets
import tokenizers
import torch
import transformers

from bench import data_stages, host_overhead, host_reads, judge, loops, profiling
from llmpipe import config
from llmpipe.errors import UserError
from llmpipe.runtime import atomic, throughput
from llmpipe.stages.corpus import CorpusRecipe
from llmpipe.stages.tokenizer import TokenizerRecipe


def library_versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__, "tokenizers": tokenizers.__version__}


def git_commit() -> str | None:
    """$BENCH_COMMIT where set (a copy of the tree whose git does not know its commit, as on a lent GPU machine),
    else HEAD of the checkout, with "+dirty" for uncommitted changes."""
    if named := os.environ.get("BENCH_COMMIT"):
        return named
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def training(recipe: Path, steps: int, warmup: int, repeats: int, compile: bool, variants: list[str] | None = None,
             bf16: bool = False, budget_s: float | None = None) -> dict:
    """Both loops on the recipe's model, then each variant under Trainer beside a run of the defaults; a variant not started within
    `budget_s` seconds of the start is recorded as skipped (a device lent for minutes still gets a result)."""
    begun = time.perf_counter()
    device = loops.default_device()
    shape = loops.recipe_shape(recipe, bf16, compile)
    defaults = shape["settings"]
    rows = loops.random_rows(shape, steps + warmup, defaults["micro_batch"])
    timed_tokens = steps * defaults["micro_batch"] * shape["context"]
    with torch.device("meta"):
        shaped = loops.fresh_model(shape, torch.device("meta"), defaults)
    flops_per_token = throughput.training_flops_per_token(shaped, shape["context"])
    parameters = sum(p.numel() for p in shaped.parameters())
    peak, source = throughput.device_peak(device)
    runs = []
    for repeat in range(repeats):
        order = loops.in_turn(repeat, (loops.plain_loop, loops.trainer_loop))
        measured = {loop: loops.timed(loop, shape, rows, warmup, device, defaults) for loop in order}
        (plain, plain_memory), (library, library_memory) = measured[loops.plain_loop], measured[loops.trainer_loop]
        runs.append({
            "first": "plain" if order[0] is loops.plain_loop else "trainer",
            "plain_tokens_per_second": round(timed_tokens / plain, 1), "trainer_tokens_per_second": round(timed_tokens / library, 1),
            "plain_peak_memory_gb": round(plain_memory, 3), "trainer_peak_memory_gb": round(library_memory, 3),
        })
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "first"}
    plain, library = median["plain_tokens_per_second"], median["trainer_tokens_per_second"]
    results = {}
    for name, change in loops.variants_of(shape, variants).items():
        if budget_s is not None and time.perf_counter() - begun > budget_s:
            results[name] = {"error": f"skipped: the run passed its budget of {budget_s:.0f} s"}
            continue
        try:
            results[name] = paired_variant(shape, defaults | change, rows, steps, warmup, repeats, device)
        except RuntimeError as err:  # a kernel that does not support these shapes or dropout, or out of memory
            results[name] = {"error": str(err).splitlines()[0][:300]}
    mfu = (lambda tokens_per_second: round(flops_per_token * tokens_per_second / peak, 4) if peak else None)  # noqa: E731
    return {
        "recipe": str(recipe),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "parameters": parameters,
        "batch": defaults["micro_batch"], "context": shape["context"], "bf16": shape["bf16"], "compile": compile,
        "warmup_steps": warmup, "timed_steps": steps, "repeats": repeats, "settings": defaults,
        "plain_tokens_per_second": plain,
        "trainer_tokens_per_second": library,
        "trainer_vs_plain": round(library / plain, 3),
        # each run times both loops back to back: the median of those pairs' ratios, steadier on a shared machine
        "trainer_vs_plain_paired": round(statistics.median(run["trainer_tokens_per_second"] / run["plain_tokens_per_second"] for run in runs), 3),
        "plain_mfu": mfu(plain),
        "trainer_mfu": mfu(library),
        "flops_per_token": flops_per_token,
        # llm.c's convention counts attention as 6 L C T instead of 12 L C T
        "llmc_flops_per_token": flops_per_token - 6 * shape["config"].n_layer * shape["config"].n_embd * shape["context"],
        "device_peak_tflops": round(peak / 1e12, 3) if peak else None,
        "device_peak_source": source,
        "plain_peak_memory_gb": median["plain_peak_memory_gb"],
        "trainer_peak_memory_gb": median["trainer_peak_memory_gb"],
        "runs": runs,
        "variants": results,
    }


def paired_variant(shape: dict, settings: dict, rows: list[dict], steps: int, warmup: int, repeats: int,
                   device: torch.device) -> dict:
    """Trainer with a variant's settings against Trainer with the defaults, back to back in each repeat (taking
    turns going first): the variant's ratio is the median of those pairs' ratios, so a machine that speeds up or
    slows down over a long run favours no variant (the defaults' figure from minutes earlier would)."""
    defaults = shape["settings"]
    batch = settings["micro_batch"]
    variant_rows = rows if batch == defaults["micro_batch"] else loops.random_rows(shape, steps + warmup, batch)
    pairs, memory = [], []  # (variant, default) tokens/s of each repeat; the variant's peak memory
    for repeat in range(repeats):
        speed, runs = {}, (("variant", settings, variant_rows), ("default", defaults, rows))
        for which, run_settings, run_rows in loops.in_turn(repeat, runs):
            seconds, peak = loops.timed(loops.trainer_loop, shape, run_rows, warmup, device, run_settings)
            speed[which] = steps * run_settings["micro_batch"] * shape["context"] / seconds
            if which == "variant":
                memory.append(peak)
        pairs.append((speed["variant"], speed["default"]))
    return {
        "trainer_tokens_per_second": round(statistics.median(variant for variant, _ in pairs), 1),
        "default_tokens_per_second": round(statistics.median(default for _, default in pairs), 1),
        "vs_default": round(statistics.median(variant / default for variant, default in pairs), 3),
        "peak_memory_gb": round(statistics.median(memory), 3),
    }


def print_tables(results: dict) -> None:
    mfu = lambda value: f"{value:>8.2%}" if value is not None else f"{'n/a':>8}"  # noqa: E731
    if train := results.get("training"):
        print(f"{'training loop':<24}{'tokens/s':>12}{'ratio':>8}{'MFU':>8}   {train['device']}, {train['parameters'] / 1e6:.1f}M parameters")
        print(f"{'plain PyTorch':<24}{train['plain_tokens_per_second']:>12,.0f}{1.0:>8.2f}{mfu(train['plain_mfu'])}")
        print(f"{'Trainer (pretrain)':<24}{train['trainer_tokens_per_second']:>12,.0f}{train['trainer_vs_plain']:>8.2f}{mfu(train['trainer_mfu'])}"
              f"   (median of the runs' own ratios: {train['trainer_vs_plain_paired']:.3f})")
        for name, variant in train["variants"].items():
            if "error" in variant:
                print(f"{'  ' + name.replace('_', ' '):<24}{'failed':>12}   {variant['error']}")
            else:
                print(f"{'  ' + name.replace('_', ' '):<24}{variant['trainer_tokens_per_second']:>12,.0f}{variant['vs_default']:>8.2f}"
                      f"  (vs Trainer defaults), peak {variant['peak_memory_gb']:.2f}G")
        print(f"{'peak memory':<24}{train['plain_peak_memory_gb']:>11.2f}G (plain), {train['trainer_peak_memory_gb']:.2f}G (Trainer)")
    if reads := results.get("host_reads"):
        compiled = ", compiled" if reads.get("compile") else ""
        print(f"\ntensor values read back to the host, a step over {reads['steps']} steps (logging every {reads['logging_steps']}{compiled}):")
        for loop in ("plain", "trainer", "trainer_syncs"):
            sites = ", ".join(f"{site} x{count}" for site, count in reads[loop]["sites"].items())
            print(f"  {loop.replace('_', ' '):<16}{reads[loop]['per_step']:>6.2f}   {sites}")
    if overhead := results.get("host_overhead"):
        model = overhead["model"]
        print(f"\nms a step, {model['n_layer']} layer {model['n_embd']} wide, {overhead['batch']} x {overhead['context']} tokens "
              f"(host work): plain {overhead['plain_ms_per_step']:.3f}, Trainer {overhead['trainer_ms_per_step']:.3f} "
              f"({overhead['trainer_extra_ms_per_step']:+.3f})")
        print("  Trainer - plain, own ms a step under cProfile: "
              + ", ".join(f"{key} {ms:+.3f}" for key, ms in list(overhead["trainer_minus_plain_own_ms"].items())[:5]))
    if profiled := results.get("profile"):
        compiled = ", compiled" if profiled["compile"] else ""
        print(f"\nms a step over {profiled['steps']} profiled steps{compiled}: wall clock, in {profiled['operations']}, outside them")
        for loop in ("plain", "trainer"):
            figures = profiled[loop]
            print(f"  {loop:<16}{figures['step_ms']:>9.2f}{figures['operations_ms']:>9.2f}{figures['outside_operations_ms']:>9.2f}")
        print("  Trainer - plain, ms a step: " + ", ".join(f"{key[:40]} {ms:+.3f}" for key, ms in list(profiled["trainer_minus_plain_ms"].items())[:5]))
    if tok := results.get("tokenizer_training"):
        print(f"\n{'BPE training':<24}{'MB/s':>12}{'ratio':>8}{'peak':>8}   {tok['text_mb']} MB, vocabulary {tok['vocab_size']}")
        print(f"{'sentencepiece':<24}{tok['sentencepiece_mb_per_second']:>12.2f}{1.0:>8.2f}{tok['sentencepiece_peak_memory_gb']:>7.2f}G")
        print(f"{'tokenizers (stage)':<24}{tok['tokenizers_mb_per_second']:>12.2f}{tok['tokenizers_vs_sentencepiece']:>8.2f}{tok['tokenizers_peak_memory_gb']:>7.2f}G")
    if judged := results.get("judge"):
        for reading, figures in judged["readings"].items():
            print(f"judge ({judged['judge']}, reading {reading}), {judged['examples']} answers: "
                  f"{figures['one_at_a_time_examples_per_second']:.2f} judged/s one at a time -> "
                  f"{figures['batched_examples_per_second']:.2f} batched ({figures['speedup']}x; "
                  f"scores differ by at most {figures['max_score_difference']:.1e})")
        print(f"judge: first_number batched over exact one at a time: {judged['speedup']}x")
    for corpus in results.get("corpus_stage", []):
        print(f"corpus stage, {corpus['text_mb']:>6.0f} MB text: {corpus['tokens_per_second']:>9,.0f} tokens/s, peak memory "
              f"{corpus['peak_anonymous_memory_gb']:.2f} GB anonymous, {corpus['peak_memory_gb']:.2f} GB resident with mapped Arrow files")


def at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="training,host_reads,overhead,tokenizer,corpus,judge", help="what to measure, comma-separated; the others keep their figures in --output (default: %(default)s)")
    parser.add_argument("--recipe", type=Path, default=Path("recipes/tiny"), help="recipe folder whose pretrain model and corpus settings are measured (default: %(default)s)")
    parser.add_argument("--steps", type=at_least_one, default=20, help="timed optimizer steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=at_least_one, default=3, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--repeats", type=at_least_one, default=3, help="runs; the median is reported (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops, also on a CPU (default: the recipe's bf16, on a GPU only)")
    parser.add_argument("--budget", type=float, help="seconds after which part training starts no more variants; those left are recorded as skipped (default: no limit)")
    parser.add_argument("--variants", help="comma-separated variants to measure, empty for none (default: all that apply: " + ", ".join(loops.VARIANTS) + ")")
    parser.add_argument("--tokenizer-mb", type=float, default=16, help="generated text both BPE trainers learn from (default: %(default)s)")
    parser.add_argument("--corpus-mb", default="64,1024", help="generated corpus sizes for the corpus stage, comma-separated (default: %(default)s)")
    parser.add_argument("--corpus-repeats", type=int, default=1, help="corpus stage runs per size (default: %(default)s)")
    parser.add_argument("--judge", default="artifacts/judge", help="judge model folder for part `judge` (default: %(default)s)")
    parser.add_argument("--judge-examples", type=int, default=6, help="instructions the judge part scores, 3 answers each (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("bench/results.json"), help="JSON to write (default: %(default)s)")
    args = parser.parse_args()
    try:
        run(args)
    except UserError as err:
        parser.exit(2, f"error: {err}\n")


def run(args: argparse.Namespace) -> None:
    parts = set(args.parts.split(","))
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}  # parts not measured keep their figures

    def save(*measured: str) -> None:  # after each part, so a part that fails or runs out of time keeps the ones before it
        stamp = {"commit": git_commit(), "versions": library_versions(), "date": time.strftime("%Y-%m-%d")}
        results.setdefault("measured_at", {}).update(dict.fromkeys(measured, stamp))  # parts kept from earlier runs keep theirs
        atomic.write_text(args.output, json.dumps(results, indent=2) + "\n")

    if "training" in parts:
        variants = None if args.variants is None else [name for name in args.variants.split(",") if name]
        results["training"] = training(args.recipe, args.steps, args.warmup, args.repeats, args.compile, variants, args.bf16, args.budget)
        save("training")
    if "host_reads" in parts:
        results["host_reads"] = host_reads.measure(args.recipe, args.steps, args.compile)
        save("host_reads")
    if "overhead" in parts:
        results["host_overhead"] = host_overhead.measure(args.recipe, compile=args.compile)
        save("host_overhead")
    if "profile" in parts:
        results["profile"] = profiling.measure(args.recipe, args.steps, args.warmup, args.compile)
        save("profile")
    if parts & {"tokenizer", "corpus"}:
        corpus = dataclasses.asdict(config.load(CorpusRecipe, args.recipe / "corpus.yaml"))
        recipe = corpus | {"num_proc": 1}  # one process: its memory is the peak
        vocab = loops.vocab_size(config.load(TokenizerRecipe, args.recipe / "tokenizer.yaml")) or loops.GPT2_VOCAB  # BPE trained anyway
        corpus_mb = [float(size) for size in args.corpus_mb.split(",")] if "corpus" in parts else []
        data = data_stages.measure(args.tokenizer_mb, vocab, corpus_mb, args.repeats, args.corpus_repeats, recipe)
        measured = data if "tokenizer" in parts else {"corpus_stage": data["corpus_stage"]}
        results |= measured
        save(*measured)
    if "judge" in parts:
        results["judge"] = judge.measure(args.judge, Path("data/instruction-data.json"), args.judge_examples)
        save("judge")
    print_tables(results)
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
