"""`make bench`: the pretrain stage's training loop (transformers `Trainer`, with the stage's defaults and
its Throughput callback) against a plain PyTorch loop training the same `GPT2LMHeadModel` on the same
batches, in the same process, alike in all but the framework: the same rows through the same collator
and DataLoader settings, the same loss call and learning-rate schedule, no KV cache, the loss and gradient
norm read back at the same logging steps, both compiled or neither. Tokens/s by wall clock over the same steps, their ratio, MFU and
peak memory, each the median of several runs; then each fast default against its alternative (variants).
With `host_reads`: the tensor values each loop reads back to the host (a GPU sync each), by call site.
With `data_stages`: tokenizer training against sentencepiece, and the corpus stage on corpora up to a
gigabyte. With `judge`: the hf judge one prompt at a time against the batched judge, under each reading. Writes
bench/results.json."""

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import accelerate
import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, set_seed

from bench import data_stages, judge
from bench.host_reads import HostReads
from llmpipe import config
from llmpipe.data.packing import causal_lm_batch
from llmpipe.runtime import mixed_precision, throughput
from llmpipe.stages import base
from llmpipe.stages.corpus import CorpusRecipe
from llmpipe.stages.pretrain import PretrainRecipe
from llmpipe.stages.tokenizer import TokenizerRecipe

GPT2_VOCAB = 50257
LOGGING_STEPS = 10  # both loops read the loss and gradient norm back this often


def recipe_shape(recipe: Path, bf16: bool = False) -> dict:
    """Model config, context, batch size, precision and run settings of a recipe folder's pretrain stage
    (bf16 autocast as the recipe says on a GPU, or wherever `bf16` asks for it)."""
    tokenizer = config.load(TokenizerRecipe, recipe / "tokenizer.yaml")
    corpus = config.load(CorpusRecipe, recipe / "corpus.yaml")
    pretrain = config.load(PretrainRecipe, recipe / "pretrain.yaml")
    vocab = GPT2_VOCAB if tokenizer.init_from == "gpt2" else tokenizer.trainer["vocab_size"]
    training = pretrain.training
    return {
        # as the stage builds it: ids from the tokenizer, no pad_token_id, no KV cache while training
        "config": GPT2Config(vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=vocab - 1, use_cache=False, **pretrain.model),
        "context": corpus.context_length,
        "learning_rate": float(training.get("learning_rate", 1e-3)),
        "bf16": bf16 or (bool(training.get("bf16", False)) and torch.cuda.is_available()),
        "gpu": torch.cuda.is_available(),
        "settings": {
            "attention": "sdpa", "optim": "adamw_torch_fused", "workers": 0, "pad_to_multiple_of": pretrain.pad_to_multiple_of,
            "activation": pretrain.model.get("activation_function", "gelu_new"), "dropout": pretrain.model.get("resid_pdrop", 0.1),
            "trainer_syncs": False, "pad_token_id": False, "fp32_outputs": False,
            "micro_batch": training.get("per_device_train_batch_size", 8), "sdpa_backend": None,  # None: PyTorch picks
        },
    }


# each setting of the defaults above against its alternative; the Trainer syncs are what the pretrain
# stage turned off (Trainer's token count, the NaN/inf filter, blocking copies, a pad_token_id on the config);
# fp32 outputs: accelerate's conversion of the logits to fp32 under bf16, which the stage drops
VARIANTS = {
    "eager_attention": {"attention": "eager"},
    "unfused_adamw": {"optim": "adamw_torch"},
    "two_dataloader_workers": {"workers": 2},
    "unpadded_vocabulary": {"pad_to_multiple_of": None},
    "gelu_new": {"activation": "gelu_new"},
    "no_dropout": {"dropout": 0.0},
    "dropout_0.1": {"dropout": 0.1},
    "trainer_syncs": {"trainer_syncs": True},
    "pad_token_id_on_config": {"pad_token_id": True},
    "fp32_outputs": {"fp32_outputs": True},
    "flash_attention": {"sdpa_backend": "FLASH_ATTENTION"},
    "cudnn_attention": {"sdpa_backend": "CUDNN_ATTENTION"},
    "efficient_attention": {"sdpa_backend": "EFFICIENT_ATTENTION"},
    "micro_batch_16": {"micro_batch": 16},
    "micro_batch_32": {"micro_batch": 32},
    "micro_batch_64": {"micro_batch": 64},
}
# variants that apply only with bf16 autocast, or only on a GPU (the SDPA kernels; micro-batches sized for its memory)
NEEDS = {
    "fp32_outputs": "bf16", "flash_attention": "gpu", "cudnn_attention": "gpu", "efficient_attention": "gpu",
    "micro_batch_16": "gpu", "micro_batch_32": "gpu", "micro_batch_64": "gpu",
}


def variants_of(shape: dict, names: list[str] | None) -> dict[str, dict]:
    """The variants that change something in this recipe (all, or those named)."""
    chosen = {name: VARIANTS[name] for name in (VARIANTS if names is None else names) if shape.get(NEEDS.get(name), True)}
    return {name: change for name, change in chosen.items() if any(shape["settings"][k] != v for k, v in change.items())}


def fresh_model(shape: dict, device: torch.device, settings: dict) -> GPT2LMHeadModel:
    set_seed(0)
    dropout = settings["dropout"]
    config = GPT2Config(**{
        **shape["config"].to_dict(), "attn_implementation": settings["attention"], "activation_function": settings["activation"],
        "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "pad_token_id": shape["config"].eos_token_id if settings["pad_token_id"] else None,
    })
    model = GPT2LMHeadModel(config)
    if settings["pad_to_multiple_of"]:
        model.resize_token_embeddings(pad_to_multiple_of=settings["pad_to_multiple_of"], mean_resizing=False)
    return model.to(device)


def plain_loop(shape: dict, rows: list[dict], warmup: int, device: torch.device, settings: dict) -> float:
    """Seconds for the timed steps of the textbook loop: forward, backward, clip, AdamW step, learning-rate
    step (Trainer's default schedule, linear decay)."""
    model = fresh_model(shape, device, settings).train()
    if shape["compile"]:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=shape["learning_rate"], weight_decay=0.1, fused=True)
    loader = torch.utils.data.DataLoader(
        rows, batch_size=settings["micro_batch"], shuffle=True, collate_fn=causal_lm_batch, drop_last=True,
        pin_memory=device.type == "cuda", num_workers=settings["workers"], generator=torch.Generator().manual_seed(0),
    )
    schedule = transformers.get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=len(loader))
    logged = torch.zeros((), device=device)
    for step, batch in enumerate(loader, start=1):
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=shape["bf16"]):
            # the loss as Trainer asks for it: summed and divided by the label count of the batch
            loss = model(**batch, num_items_in_batch=batch["labels"][..., 1:].ne(-100).sum()).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        logged += loss.detach()
        if step == warmup:
            throughput.synchronize()
            started = time.perf_counter()
        if step % LOGGING_STEPS == 0:
            _ = (logged.item(), grad_norm.item())
            logged.zero_()
    throughput.synchronize()
    return time.perf_counter() - started


class WallClock(TrainerCallback):
    """Seconds from the end of the warm-up steps to the end of the last step (as the plain loop is timed)."""

    def __init__(self, warmup: int):
        self.warmup, self.seconds = warmup, 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, state.max_steps):
            throughput.synchronize()
            self.seconds = time.perf_counter() - self.seconds


def trainer_loop(shape: dict, rows: list[dict], warmup: int, device: torch.device, settings: dict) -> float:
    """Seconds for the timed steps under `Trainer`, set up as the pretrain stage sets it up."""
    model = fresh_model(shape, device, settings)
    clock = WallClock(warmup)
    syncs = {"include_num_input_tokens_seen": "all", "logging_nan_inf_filter": True, "accelerator_config": {"non_blocking": False}}
    with tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(**{
            **base.fast_defaults(), "include_num_input_tokens_seen": "no", "dataloader_drop_last": True,
            **(syncs if settings["trainer_syncs"] else {}),
            "output_dir": scratch, "max_steps": len(rows) // settings["micro_batch"], "per_device_train_batch_size": settings["micro_batch"],
            "learning_rate": shape["learning_rate"], "weight_decay": 0.1, "max_grad_norm": 1.0, "bf16": shape["bf16"],
            "optim": settings["optim"], "dataloader_num_workers": settings["workers"], "report_to": [], "save_strategy": "no",
            "logging_steps": LOGGING_STEPS, "disable_tqdm": True, "torch_compile": shape["compile"], "seed": 0,
        })
        callbacks = [clock] if settings["fp32_outputs"] else [clock, mixed_precision.HalfPrecisionOutputs()]
        trainer = Trainer(model=model, args=arguments, train_dataset=rows, data_collator=causal_lm_batch, callbacks=callbacks)
        throughput.add_to(trainer, throughput.Throughput(sequence_length=shape["context"], skip_steps=warmup))
        trainer.train()
    return clock.seconds


def timed(loop, shape: dict, rows: list[dict], warmup: int, device: torch.device, settings: dict) -> tuple[float, float]:
    """(seconds, peak memory in GB) of one run of `loop`, with only the settings' SDPA kernel allowed if it names one."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    backend = settings["sdpa_backend"]
    with sdpa_kernel(getattr(SDPBackend, backend)) if backend else contextlib.nullcontext():
        seconds = loop(shape, rows, warmup, device, settings)
    return seconds, throughput.peak_memory_gb(device)


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


def random_rows(shape: dict, steps: int, batch: int) -> list[dict]:
    """Enough full blocks of random token ids for `steps` batches of `batch`."""
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, shape["config"].vocab_size, (steps * batch, shape["context"]), generator=generator)
    return [{"input_ids": block.tolist()} for block in blocks]


def host_reads(recipe: Path, steps: int, compile: bool = False) -> dict:
    """Tensor values read back to the host over the same `steps` (reading the loss and gradient norm every
    LOGGING_STEPS) by the plain loop, by Trainer as the pretrain stage sets it up, and by Trainer with the
    syncs the stage turns off: their count a step and by call site."""
    shape = recipe_shape(recipe) | {"compile": compile}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    defaults = shape["settings"]
    rows = random_rows(shape, steps, defaults["micro_batch"])
    loops = {
        "plain": (plain_loop, defaults), "trainer": (trainer_loop, defaults),
        "trainer_syncs": (trainer_loop, defaults | VARIANTS["trainer_syncs"]),
    }
    counted = {}
    for name, (loop, settings) in loops.items():
        with HostReads() as reads:
            loop(shape, rows, 1, device, settings)
        counted[name] = {"reads": reads.sites.total(), "per_step": round(reads.sites.total() / steps, 2), "sites": dict(reads.sites)}
    return {"recipe": str(recipe), "compile": compile, "steps": steps, "logging_steps": LOGGING_STEPS, **counted}


def training(recipe: Path, steps: int, warmup: int, repeats: int, compile: bool, variants: list[str] | None = None,
             bf16: bool = False, budget_s: float | None = None) -> dict:
    """Both loops on the recipe's model, then each variant under Trainer; a variant not started within
    `budget_s` seconds of the start is recorded as skipped (a device lent for minutes still gets a result)."""
    begun = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = recipe_shape(recipe, bf16) | {"compile": compile}
    defaults = shape["settings"]
    rows = random_rows(shape, steps + warmup, defaults["micro_batch"])
    timed_tokens = steps * defaults["micro_batch"] * shape["context"]
    with torch.device("meta"):
        shaped = fresh_model(shape, torch.device("meta"), defaults)
    flops_per_token = throughput.training_flops_per_token(shaped, shape["context"])
    parameters = sum(p.numel() for p in shaped.parameters())
    peak, source = throughput.device_peak(device)
    runs = []
    for repeat in range(repeats):
        # every other run times Trainer first, so a drift within the process (GPU clocks and heat, allocator,
        # compile caches) favours neither loop
        order = (plain_loop, trainer_loop) if repeat % 2 == 0 else (trainer_loop, plain_loop)
        measured = {loop: timed(loop, shape, rows, warmup, device, defaults) for loop in order}
        (plain, plain_memory), (library, library_memory) = measured[plain_loop], measured[trainer_loop]
        runs.append({
            "first": "plain" if order[0] is plain_loop else "trainer",
            "plain_tokens_per_second": round(timed_tokens / plain, 1), "trainer_tokens_per_second": round(timed_tokens / library, 1),
            "plain_peak_memory_gb": round(plain_memory, 3), "trainer_peak_memory_gb": round(library_memory, 3),
        })
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "first"}
    plain, library = median["plain_tokens_per_second"], median["trainer_tokens_per_second"]
    results = {}
    for name, change in variants_of(shape, variants).items():
        if budget_s is not None and time.perf_counter() - begun > budget_s:
            results[name] = {"error": f"skipped: the run passed its budget of {budget_s:.0f} s"}
            continue
        settings = defaults | change
        batch = settings["micro_batch"]
        rows_of_variant = rows if batch == defaults["micro_batch"] else random_rows(shape, steps + warmup, batch)
        try:
            runs_of_variant = [timed(trainer_loop, shape, rows_of_variant, warmup, device, settings) for _ in range(repeats)]
        except RuntimeError as err:  # a kernel that does not support these shapes or dropout, or out of memory
            results[name] = {"error": str(err).splitlines()[0][:300]}
            continue
        speed = statistics.median(steps * batch * shape["context"] / seconds for seconds, _ in runs_of_variant)
        results[name] = {
            "trainer_tokens_per_second": round(speed, 1), "vs_default": round(speed / library, 3),
            "peak_memory_gb": round(statistics.median(memory for _, memory in runs_of_variant), 3),
        }
    mfu = (lambda tokens_per_second: round(flops_per_token * tokens_per_second / peak, 4) if peak else None)  # noqa: E731
    return {
        "recipe": str(recipe),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__},
        "commit": git_commit(),
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="training,host_reads,tokenizer,corpus,judge", help="what to measure, comma-separated; the others keep their figures in --output (default: %(default)s)")
    parser.add_argument("--recipe", type=Path, default=Path("recipes/tiny"), help="recipe folder whose pretrain model and corpus settings are measured (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the median is reported (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops, also on a CPU (default: the recipe's bf16, on a GPU only)")
    parser.add_argument("--budget", type=float, help="seconds after which part training starts no more variants; those left are recorded as skipped (default: no limit)")
    parser.add_argument("--variants", help="comma-separated variants to measure, empty for none (default: all that apply: " + ", ".join(VARIANTS) + ")")
    parser.add_argument("--tokenizer-mb", type=float, default=16, help="generated text both BPE trainers learn from (default: %(default)s)")
    parser.add_argument("--corpus-mb", default="64,1024", help="generated corpus sizes for the corpus stage, comma-separated (default: %(default)s)")
    parser.add_argument("--corpus-repeats", type=int, default=1, help="corpus stage runs per size (default: %(default)s)")
    parser.add_argument("--judge", default="artifacts/judge", help="judge model folder for part `judge` (default: %(default)s)")
    parser.add_argument("--judge-examples", type=int, default=6, help="instructions the judge part scores, 3 answers each (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("bench/results.json"), help="JSON to write (default: %(default)s)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}  # parts not measured keep their figures
    if "host_reads" in parts:
        results["host_reads"] = host_reads(args.recipe, args.steps, args.compile)
    if "training" in parts:
        variants = None if args.variants is None else [name for name in args.variants.split(",") if name]
        results["training"] = training(args.recipe, args.steps, args.warmup, args.repeats, args.compile, variants, args.bf16, args.budget)
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
