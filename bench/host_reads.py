"""Reads of tensor values back to the host (`.item()`, `bool()`, `.tolist()`, ...) counted by call site. On a
GPU each one waits until everything queued before it has run (a sync), so a loop that reads one at every
step cannot queue work ahead of the GPU. The count needs no GPU: the same Python calls happen on a CPU."""

import collections
import os
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from bench import loops

READS = {
    torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.tolist, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.__index__, torch.Tensor.nonzero,
}
# the data path reads its sampler's index tensors, which stay on the host (no sync)
HOST_ONLY = ("torch/utils/data/", "accelerate/data_loader.py")


class HostReads(TorchFunctionMode):
    """While active, `sites` counts each read by the first caller outside torch ("file:line"), but for the
    reads made directly by the data path."""

    def __init__(self):
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            stack = traceback.extract_stack()[:-1]
            caller = next(frame for frame in reversed(stack) if "/torch/" not in frame.filename)
            if not any(part in stack[-1].filename for part in HOST_ONLY):
                installed = "site-packages/" in caller.filename
                path = caller.filename.split("site-packages/")[-1] if installed else os.path.relpath(caller.filename)
                self.sites[f"{path}:{caller.lineno}"] += 1
        return func(*args, **(kwargs or {}))


def measure(recipe: Path, steps: int, compile: bool = False) -> dict:
    """Tensor values read back to the host over the same `steps` (reading the loss and gradient norm every
    loops.LOGGING_STEPS) by the plain loop, by Trainer as the pretrain stage sets it up, and by Trainer with the
    syncs the stage turns off: their count a step and by call site."""
    shape = loops.recipe_shape(recipe, compile=compile)
    device = loops.default_device()
    defaults = shape["settings"]
    rows = loops.random_rows(shape, steps, defaults["micro_batch"])
    measured = {
        "plain": (loops.plain_loop, defaults), "trainer": (loops.trainer_loop, defaults),
        "trainer_syncs": (loops.trainer_loop, defaults | loops.VARIANTS["trainer_syncs"]),
    }
    counted = {}
    for name, (loop, settings) in measured.items():
        with HostReads() as reads:
            loop(shape, rows, 1, device, settings)
        counted[name] = {"reads": reads.sites.total(), "per_step": round(reads.sites.total() / steps, 2), "sites": dict(reads.sites)}
    return {"recipe": str(recipe), "compile": compile, "steps": steps, "logging_steps": loops.LOGGING_STEPS, **counted}
