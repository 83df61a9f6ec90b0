"""Training throughput: tokens per second of the training steps, peak memory, and model FLOPs
utilisation (MFU): achieved FLOP/s over the device's peak — on a GPU its datasheet's dense bf16
peak, on a CPU this machine's measured fp32 matmul throughput (measured once, then cached)."""

import json
import platform
import resource
import time
from pathlib import Path

import torch
from transformers import DefaultFlowCallback, PreTrainedModel, Trainer, TrainerCallback

from llmpipe.runtime import atomic

# Dense bf16 tensor-core peaks from the vendors' datasheets, FLOP/s; of the names found in
# torch.cuda.get_device_name() the longest wins ("L40S" over "L40" over "L4").
GPU_PEAKS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16: V100 has no bf16
}
CPU_PEAK_CACHE = Path.home() / ".cache" / "llmpipe" / "cpu_matmul_peak.json"


def gpu_peak(name: str) -> float | None:
    found = [key for key in GPU_PEAKS if key in name]
    return GPU_PEAKS[max(found, key=len)] if found else None


def cpu_matmul_peak(size: int = 1024, seconds: float = 1.0) -> float:
    """Best fp32 matmul FLOP/s of this CPU with torch's current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def device_peak(device: torch.device) -> tuple[float | None, str]:
    """(peak FLOP/s or None if unknown, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return gpu_peak(name), f"{name} datasheet bf16 dense"
    key = f"{platform.processor() or platform.machine()}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    try:
        cache = json.loads(CPU_PEAK_CACHE.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        cache = {}
    if key not in cache:
        cache[key] = cpu_matmul_peak()
        try:
            atomic.write_json(CPU_PEAK_CACHE, cache)
        except OSError:  # only a cache (read-only home, full disk): measure again next time
            pass
    return cache[key], f"measured fp32 matmul, {torch.get_num_threads()} threads"


def training_flops_per_token(model: PreTrainedModel, sequence_length: int) -> float:
    """Forward 2N, backward 2N to the activations plus 2N' for the N' trainable weights' gradients
    (6N when everything trains), plus attention's 12 x layers x width x sequence (PaLM, appendix B)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = model.config
    attention = 12 * config.num_hidden_layers * config.hidden_size * sequence_length
    return 4 * total + 2 * trainable + attention


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Throughput(TrainerCallback):
    """Times the training steps only (not evaluation or saving) and reports tokens/s, achieved FLOP/s per
    device and MFU at every logging step (added to the log, so MLflow charts them) and, with peak memory,
    at the end (`summary`). With `sequence_length` it counts the tokens itself, `sequence_length` a
    sequence (packed blocks), on the host: Trainer's own count (`include_num_input_tokens_seen`)
    synchronises with the GPU at every micro-batch. Without it, it reads Trainer's count (padded batches).
    Add it with `add_to`, so its log entries reach the reporters."""

    def __init__(self, sequence_length: int | None = None, skip_steps: int = 0):
        self.sequence_length = sequence_length
        self.skip_steps = skip_steps  # warm-up steps left out of the timing (benchmarks)
        self.seconds = 0.0
        self.first_step: int | None = None  # where this process started: 0, or the step a resume continues from
        self.untimed_tokens = 0
        self._started: float | None = None
        self._last_log = (0.0, 0, 0)  # seconds, tokens, steps at the previous logging step

    def _counts(self, args) -> bool:
        """Whether this callback counts the tokens (else Trainer does)."""
        return self.sequence_length is not None and args.include_num_input_tokens_seen == "no"

    def _count_batch(self, args, state) -> None:
        if self._counts(args):
            state.num_input_tokens_seen += args.train_batch_size * args.world_size * self.sequence_length

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step, self.untimed_tokens = state.global_step, state.num_input_tokens_seen
        if self._started is None:  # a run of steps starts: after warm-up, evaluation, saving or logging
            synchronize()
            self._started = time.perf_counter()

    def on_substep_end(self, args, state, control, **kwargs):
        self._count_batch(args, state)

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):
        """One process's last batch of an epoch is short unless the data divides (several processes get
        even batches from accelerate): take back what `_count_batch` counted as full. Trainer's flow
        callback asks here for the evaluation, saving and logging of `*_strategy: epoch`: the timing stops."""
        completed = abs(state.epoch - round(state.epoch)) < 1e-9  # not stopped part-way by max_steps
        if self._counts(args) and completed and args.world_size == 1 and not args.dataloader_drop_last:
            short = len(train_dataloader) * args.train_batch_size - len(train_dataloader.dataset)
            state.num_input_tokens_seen -= short * self.sequence_length
        if control.should_evaluate or control.should_save or control.should_log:
            self._stop_timing()

    def on_step_end(self, args, state, control, **kwargs):
        self._count_batch(args, state)
        if state.global_step <= self.first_step + self.skip_steps:
            synchronize()
            self.untimed_tokens = state.num_input_tokens_seen
            self._started = None
        elif control.should_evaluate or control.should_save or control.should_log or control.should_training_stop:
            self._stop_timing()  # only where a run of steps ends: in between, the GPU queues work ahead

    def _stop_timing(self) -> None:
        if self._started is not None:
            synchronize()
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        # evaluation and end-of-training entries carry no rates; only rank 0's logs are reported, and ranks
        # measuring the CPU's peak at once would each measure it against the others
        if "loss" not in logs or not state.is_world_process_zero:
            return
        now = (self.seconds, self.timed_tokens(state), self.timed_steps(state))
        seconds, tokens, steps = (a - b for a, b in zip(now, self._last_log))
        if seconds > 0:
            rates = self.rates(args, model, tokens, seconds, steps)
            logs |= {key: rates[key] for key in ("tokens_per_second", "mfu") if key in rates}
            state.log_history[-1] |= logs  # Trainer recorded a copy before calling the callbacks
        self._last_log = now

    def timed_tokens(self, state) -> int:
        return state.num_input_tokens_seen - self.untimed_tokens

    def timed_steps(self, state) -> int:
        return max(state.global_step - (self.first_step or 0) - self.skip_steps, 0)

    def rates(self, args, model, tokens: int, seconds: float, steps: int) -> dict[str, float]:
        sequences = steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        tokens_per_second = tokens / seconds if seconds else 0.0
        flops_per_token = training_flops_per_token(model, round(tokens / max(sequences, 1)))
        achieved = flops_per_token * tokens_per_second / args.world_size
        metrics = {"tokens_per_second": round(tokens_per_second, 1), "achieved_tflops_per_device": round(achieved / 1e12, 4)}
        peak, source = device_peak(model.device)
        if peak:
            metrics["mfu"] = round(achieved / peak, 4)
            metrics["device_peak_tflops"] = round(peak / 1e12, 3)
        metrics["device_peak_source"] = source
        return metrics

    def summary(self, trainer: Trainer) -> dict[str, float | str]:
        state, model = trainer.state, trainer.model
        rates = self.rates(trainer.args, model, self.timed_tokens(state), self.seconds, self.timed_steps(state))
        return {
            "tokens_per_second": rates.pop("tokens_per_second"),
            "train_step_seconds": round(self.seconds, 2),
            "achieved_tflops_per_device": rates.pop("achieved_tflops_per_device"),
            "peak_memory_gb": round(peak_memory_gb(model.device), 3),
            **rates,
        }


def add_to(trainer: Trainer, timer: Throughput) -> None:
    """Right after Trainer's flow callback (which decides, in `on_step_end`, when to log and evaluate: the
    timer closes its timing windows there) and before the reporters (MLflow, the console), which get each
    log after it; `Trainer(callbacks=...)` would put it after them."""
    callbacks = trainer.callback_handler.callbacks
    flow = next(i for i, callback in enumerate(callbacks) if isinstance(callback, DefaultFlowCallback))
    callbacks.insert(flow + 1, timer)


# what `Throughput.summary` measures: properties of the machine and the run, not of the model
MEASURED = (
    "tokens_per_second", "train_step_seconds", "achieved_tflops_per_device", "peak_memory_gb", "mfu",
    "device_peak_tflops", "device_peak_source",
)


def mfu_text(metrics: dict) -> str:
    """", MFU 12.3%" for a stage's summary line, or nothing where the device's peak is unknown."""
    return f", MFU {metrics['mfu']:.1%}" if "mfu" in metrics else ""
