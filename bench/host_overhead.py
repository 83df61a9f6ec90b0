"""The framework's own cost a step: both loops, with the recipe's settings, on a model so small (one layer 16
wide, 32-token blocks, 256 tokens) that a step is almost all host work (Python, the framework's bookkeeping,
operator dispatch). Trainer's extra milliseconds a step then show clearly, where on a real model they drown in
the compute's noise. Then, from cProfile over the same steps, the Python functions whose own time a step
differs most between the loops: where Trainer's extra time goes."""

import cProfile
import pstats
import statistics
from pathlib import Path

import torch
from transformers import GPT2Config

from bench import loops

SMALLEST = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 256, "bos_token_id": 255, "eos_token_id": 255}
CONTEXT = 32
TOP = 10


def smallest_shape(recipe: Path, compile: bool) -> dict:
    shape = loops.recipe_shape(recipe, compile=compile)
    return shape | {"config": GPT2Config(**{**shape["config"].to_dict(), **SMALLEST}), "context": CONTEXT}


def own_ms(loop, shape: dict, rows: list[dict], warmup: int, device: torch.device) -> dict[str, float]:
    """Milliseconds a step in each Python function's own code (cProfile's tottime), over the timed steps."""
    profiler, steps, done = cProfile.Profile(), len(rows) // shape["settings"]["micro_batch"], 0

    def on_step() -> None:
        nonlocal done
        done += 1
        if done == warmup:
            profiler.enable()
        elif done == steps:
            profiler.disable()

    loop(shape, rows, warmup, device, shape["settings"], on_step=on_step)
    timed = steps - warmup
    table = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, primitive calls, own s, total s, callers)
    return {f"{Path(file).name}:{line}({function})": figures[2] / timed * 1000 for (file, line, function), figures in table.items()}


def measure(recipe: Path, steps: int = 200, warmup: int = 20, repeats: int = 3, compile: bool = False) -> dict:
    shape = smallest_shape(recipe, compile)
    device = loops.default_device()
    rows = loops.random_rows(shape, steps + warmup, shape["settings"]["micro_batch"])
    step_ms = {"plain": [], "trainer": []}
    named = {"plain": loops.plain_loop, "trainer": loops.trainer_loop}
    for repeat in range(repeats):
        for name in loops.in_turn(repeat, ("plain", "trainer")):
            seconds, _ = loops.timed(named[name], shape, rows, warmup, device, shape["settings"])
            step_ms[name].append(seconds / steps * 1000)
    plain, trainer = (statistics.median(step_ms[name]) for name in ("plain", "trainer"))
    profiled = {name: own_ms(loop, shape, rows, warmup, device) for name, loop in named.items()}
    largest = sorted(loops.trainer_minus_plain(profiled["plain"], profiled["trainer"]).items(), key=lambda item: -item[1])[:TOP]
    return {
        "recipe": str(recipe), "compile": compile, "model": {key: SMALLEST[key] for key in ("n_layer", "n_embd", "vocab_size")},
        "context": CONTEXT, "batch": shape["settings"]["micro_batch"], "steps": steps, "warmup_steps": warmup, "repeats": repeats,
        "plain_ms_per_step": round(plain, 3), "trainer_ms_per_step": round(trainer, 3),
        "trainer_extra_ms_per_step": round(trainer - plain, 3),
        # cProfile's own cost inflates each figure: compare them with each other, not with the step times
        "trainer_minus_plain_own_ms": {key: round(ms, 4) for key, ms in largest},
    }
