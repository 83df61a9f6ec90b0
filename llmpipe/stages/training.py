"""What every training stage shares around `Trainer`: its arguments from the recipe's `training` section,
a start that resumes an unfinished run, the loss figures before and after, and the folder it saves into."""

import argparse
import contextlib
import pickle
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, parse_flag_from_env
from datasets import Dataset
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from llmpipe.errors import UserError
from llmpipe.runtime import atomic, checkpoints
from llmpipe.stages import base


def train_probe(train: Dataset, size: int) -> Dataset:
    """The first `size` train rows, scored beside validation so train and validation loss compare (the book's plot)."""
    return train.select(range(min(size, len(train))))


def initial_losses(log_history: list[dict]) -> dict[str, float]:
    """The evaluation at step 0 (`eval_on_start`), one log entry per eval data set, merged. Not a
    `Trainer.evaluate()` before `train()`: under several processes that leaves the model without
    gradient averaging (transformers 5.23), and a resumed run finds it in the checkpoint's history."""
    merged = {}
    for entry in log_history:
        if entry.get("step") == 0 and any(key.startswith("eval_") for key in entry):
            merged |= entry
    return merged


def loss_metrics(initial: dict, final: dict) -> dict[str, float]:
    """Train-probe and validation loss before and after training (`Trainer` evaluations of both)."""
    return {
        "initial_train_loss": round(initial["eval_train_loss"], 4),
        "initial_val_loss": round(initial["eval_validation_loss"], 4),
        "train_loss": round(final["eval_train_loss"], 4),
        "val_loss": round(final["eval_validation_loss"], 4),
    }


def fast_defaults() -> dict[str, Any]:
    """TrainingArguments defaults that keep the host from waiting on the GPU at every step."""
    gpu = torch.cuda.is_available()
    return {
        "dataloader_pin_memory": gpu,  # pinned host memory, so that batches copy to the GPU asynchronously
        "accelerator_config": {"non_blocking": gpu},
        "logging_nan_inf_filter": False,  # an isnan/isinf read back from the GPU every micro-batch
        # without it, processes launched on a machine with no GPU each believe they are the only one
        "use_cpu": not gpu,
    }


def sharded_on_cpu() -> bool:
    """Under an FSDP launch on processes without a GPU, prepares accelerate's process state so that the run
    is sharded, and says so (TrainingArguments must then keep that state: `use_configured_state`).
    accelerate 1.16 makes a launch's FSDP settings a sharded run only from a multi-accelerator state
    (`AcceleratorState.__init__`: the FSDP branch is under `distributed_type in [MULTI_GPU, MULTI_XPU, ...]`);
    CPU processes are MULTI_CPU and would silently train as plain DDP. torch's FSDP2 shards over gloo, so
    the CPU processes are presented as multi-device: accelerate turns that into FSDP, on the CPU and gloo."""
    if torch.cuda.is_available() or not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return False
    if PartialState(cpu=True).distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return True


def arguments(cls: type, settings: dict, checkpoint_dir: str, job: base.Stage, reports_initial_losses: bool = False, **defaults: Any):
    """`TrainingArguments` (or a subclass such as TRL's `SFTConfig`) from the recipe's `training`
    section (checked by `begin`); llmpipe owns where checkpoints go and where metrics are reported. Trainer
    counts the input tokens (for throughput.Throughput) unless `defaults` says otherwise. With
    `reports_initial_losses`, the stage reports the losses before training: the evaluation at step 0 is then llmpipe's."""
    if reports_initial_losses:
        base.reject_owned(settings, ("eval_on_start",), f"{job.recipe_path}: `training",
                          "the stage (its losses before training are the evaluation at step 0)")
        defaults["eval_on_start"] = True
    defaults = {**fast_defaults(), "include_num_input_tokens_seen": "non_padding", **defaults}
    if sharded_on_cpu():
        defaults["accelerator_config"] = {**defaults["accelerator_config"], "use_configured_state": True}

    def build(recipe_settings: dict):
        return cls(**{**defaults, **recipe_settings}, output_dir=checkpoint_dir, report_to=job.tracker.report_to)

    try:
        return build(settings)
    except ValueError as err:
        # TrainingArguments names the value it refuses, seldom the argument: the culprits are the recipe's keys
        # without which it builds
        named = [f"`training.{key}`" for key in settings if _builds(build, {k: v for k, v in settings.items() if k != key})]
        raise UserError(f"{job.recipe_path}: {', '.join(named) or '`training`'}: {str(err).strip().splitlines()[0]}") from None


def _builds(build, settings: dict) -> bool:
    try:
        build(settings)
        return True
    except ValueError:
        return False


def train(trainer: Trainer, args: argparse.Namespace, identity: dict) -> None:
    """`trainer.train()`, resuming from --checkpoints when they hold an unfinished run of this `identity`."""
    resume = checkpoints.resume_point(args.checkpoints, identity, args.restart, trainer.args)
    if resume is not None:
        trainer.args.eval_on_start = False  # the step-0 evaluation is in the checkpoint's history
        if trainer.is_world_process_zero():
            print(f"resuming from {resume}", flush=True)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except pickle.UnpicklingError as err:  # Trainer loads checkpoint state with torch.load(weights_only=True)
        raise UserError(
            f"{resume}: holds a pickle that is not plain tensors, refused unread ({str(err).splitlines()[0][:200]}); "
            f"delete {args.checkpoints} (or pass --restart) unless you trust where it came from"
        ) from None


@contextlib.contextmanager
def output_folder(target: str | Path, trainer: Trainer) -> Iterator[Path]:
    """Every rank saves (FSDP and DeepSpeed gather the weights across ranks inside `save_model`), but only
    rank 0 writes into `target`, atomically; the others get a scratch folder outside the repository.
    Trainer's pickled `training_args.bin` is left out: the card and MLflow hold the settings."""
    if trainer.is_world_process_zero():
        with atomic.directory(target) as staging:
            yield staging
            for pickled in staging.rglob(TRAINING_ARGS_NAME):
                pickled.unlink()
    else:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
