"""Where a step's time goes in each loop: `torch.profiler` over the same timed steps of the plain loop and of
Trainer, the time a step spends in operations on the device (GPU kernels; on a CPU, PyTorch's operators),
the rest of the step (the device waiting on the host), and the operations whose time a step differs most
between the loops. A gap that is not in the operations is the host's: launches, Python, syncs."""

from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from bench import loops

TOP = 12  # operations listed per loop, and differences listed


def operation_ms(events, on_gpu: bool, steps: int) -> dict[str, float]:
    """Milliseconds a step in each operation: GPU kernels' own time, or on a CPU each operator's own time, less
    the profiler's own step markers (on a CPU their time is the step's less its operators'; on a GPU the
    marker spans the step's kernels, so counting it counts them twice)."""
    device_type = DeviceType.CUDA if on_gpu else DeviceType.CPU
    totals = {event.key: event.self_device_time_total if on_gpu else event.self_cpu_time_total for event in events
              if event.device_type == device_type and not event.key.startswith("ProfilerStep")}
    return {key: microseconds / steps / 1000 for key, microseconds in totals.items() if microseconds > 0}


def profiled(loop, shape: dict, rows: list[dict], steps: int, warmup: int, device: torch.device) -> tuple[float, dict[str, float], int]:
    """(milliseconds a step by wall clock, milliseconds a step by operation, optimizer steps the profile saw)
    over the steps after `warmup`."""
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    # the profiler starts tracing a step early and drops that step, so its own start-up is not counted
    plan = schedule(wait=max(warmup - 1, 0), warmup=min(warmup, 1), active=steps, repeat=1)
    with profile(activities=activities, schedule=plan) as profiler:
        seconds = loop(shape, rows, warmup, device, shape["settings"], on_step=profiler.step)
    events = profiler.key_averages()
    optimizer_steps = sum(event.count for event in events  # the host's calls: on a GPU the same name is a device range too
                          if event.key.startswith("Optimizer.step#") and event.device_type == DeviceType.CPU)
    return seconds / steps * 1000, operation_ms(events, on_gpu, steps), optimizer_steps


def measure(recipe: Path, steps: int, warmup: int, compile: bool = False) -> dict:
    shape = loops.recipe_shape(recipe, compile=compile)
    device = loops.default_device()
    rows = loops.random_rows(shape, steps + warmup, shape["settings"]["micro_batch"])
    inside = "GPU kernels" if device.type == "cuda" else "CPU operators"
    result = {"recipe": str(recipe), "compile": compile, "steps": steps, "warmup_steps": warmup, "operations": inside}
    per_operation = {}
    for name, loop in (("plain", loops.plain_loop), ("trainer", loops.trainer_loop)):
        step_ms, per_operation[name], optimizer_steps = profiled(loop, shape, rows, steps, warmup, device)
        busy = sum(per_operation[name].values())
        top = sorted(per_operation[name].items(), key=lambda item: -item[1])[:TOP]
        result[name] = {
            "profiled_steps": optimizer_steps, "step_ms": round(step_ms, 3),
            "operations_ms": round(busy, 3), "outside_operations_ms": round(step_ms - busy, 3),
            "top_operations_ms": {key: round(ms, 4) for key, ms in top},
        }
    differences = loops.trainer_minus_plain(per_operation["plain"], per_operation["trainer"])
    largest = sorted(differences.items(), key=lambda item: -abs(item[1]))[:TOP]
    result["trainer_minus_plain_ms"] = {key: round(ms, 4) for key, ms in largest}
    return result
