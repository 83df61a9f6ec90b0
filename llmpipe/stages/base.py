"""What every pipeline stage shares: its command-line options, its config, its MLflow run, its ending."""

import argparse
import contextlib
import dataclasses
import pickle
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from datasets import Dataset
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from llmpipe import config
from llmpipe import params as pipeline_params
from llmpipe.data import instructions
from llmpipe.errors import UserError
from llmpipe.hub import cards
from llmpipe.runtime import atomic, checkpoints
from llmpipe.runtime.tracking import StageRun


def add_common_arguments(parser: argparse.ArgumentParser, stage: str, schema: type) -> None:
    parser.add_argument("--params", default="params.yaml", help="pipeline params: active recipe, data, MLflow (default: %(default)s)")
    parser.add_argument("--recipe", help=f"the stage's recipe (default: recipes/<recipe in params>/{stage}.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one recipe value, e.g. --set training.learning_rate=3e-4 (YAML value; "
        "wins over the recipe file; repeatable)",
    )
    parser.add_argument(
        "--set-from", dest="changes", metavar="FILE:NAME",
        help="apply the recipe values under NAME in the YAML file FILE before any --set, e.g. "
        "recipes/tiny/adaptation.yaml:methods.probe (how the adaptation experiment runs each method)",
    )
    parser.add_argument("--metrics", default=f"metrics/{stage}.json", help="metrics JSON to write (default: %(default)s)")
    parser.epilog = "recipe keys: " + describe(schema)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def add_training_arguments(parser: argparse.ArgumentParser, stage: str, schema: type, base: bool = True) -> None:
    """The common options plus a training stage's model folder and checkpoints (and its base model)."""
    add_common_arguments(parser, stage, schema)
    if base:
        parser.add_argument("--base", default="artifacts/pretrain", help="model to start from unless the recipe's init_from is set (default: %(default)s)")
    parser.add_argument("--output", default=f"artifacts/{stage}", help="folder to write (default: %(default)s)")
    parser.add_argument(
        "--checkpoints", default=f"checkpoints/{stage}",
        help="Trainer checkpoints; an unfinished run of the same recipe resumes from the newest (default: %(default)s)",
    )
    parser.add_argument("--restart", action="store_true", help="discard the checkpoints of an unfinished run and train from the start")


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


def describe(schema: type) -> str:
    """The recipe's keys for --help: own keys with defaults, library sections by class."""
    parts, hints = [], typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        choices = typing.get_args(hints[field.name]) if typing.get_origin(hints[field.name]) is Literal else ()
        library = field.metadata.get("library")
        if library is not None:
            parts.append(f"{field.name}.* ({library.__module__.split('.')[0]} {library.__name__} arguments)")
        elif dataclasses.is_dataclass(field.type):
            keys = ", ".join(f.name for f in dataclasses.fields(field.type))
            parts.append(f"{field.name}.* ({keys})")
        elif field.default_factory is not dataclasses.MISSING:
            parts.append(f"{field.name} (default {field.default_factory()!r})")
        else:
            default = field.default if field.default is not dataclasses.MISSING else "required"
            parts.append(f"{field.name} (default {default!r}{'; one of ' + ', '.join(choices) if choices else ''})")
    return ", ".join(parts)


@dataclass
class Stage:
    name: str
    params: pipeline_params.Params
    recipe: Any
    recipe_path: Path
    metrics_path: Path
    tracker: StageRun
    started: float

    def log_config(self, **settings: Any) -> None:
        """The resolved recipe and params.yaml `data` as MLflow params, plus `settings` (dotted names)."""
        self.tracker.log_config(config.flatten(self.recipe) | config.flatten(self.params.data, "data.") | settings)

    def card(self, artifact: str, metrics: dict[str, Any], folder: str | Path, base_model: str | None = None,
             prompt_format: str = "alpaca", model_type: str | None = None):
        """The model card of what this stage saves into `folder` (a `cards.KINDS` artifact of a `model_type`)."""
        facts = cards.facts(self, artifact, metrics, base_model, prompt_format, model_type)
        return cards.model_card(facts, str(folder), self.params.hub.license, self.params.hub.language)

    def finish(self, metrics: dict[str, Any], summary: str) -> None:
        """Write the metrics JSON, log it, and print the stage's one-line summary (rank 0 only calls it)."""
        metrics = {**metrics, "seconds": round(time.perf_counter() - self.started, 2)}
        atomic.write_json(self.metrics_path, metrics)
        print(f"{self.name}: {summary} [{metrics['seconds']:.0f}s]", flush=True)
        self.tracker.log_metrics(metrics)
        self.tracker.log_artifact(self.metrics_path, "metrics")


def reject_owned(section: dict, names: tuple[str, ...], where: str, owner: str) -> None:
    """Keys llmpipe sets itself may not come from the recipe; `where` is "<file>: `<section>"."""
    for name in names:
        if name in section:
            raise UserError(f"{where}.{name}` is set by llmpipe from {owner}; remove it from the recipe")


# TrainingArguments accepts these at or below zero and fails (or silently does nothing) later
POSITIVE_SETTINGS = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")


def check_training(settings: dict, recipe_path: Path) -> None:
    """The recipe's `training` section, checked before anything is logged or trained."""
    where = f"{recipe_path}: `training"
    reject_owned(settings, ("output_dir", "report_to"), where, "--checkpoints and params.yaml mlflow")
    # pushing is `llmpipe push`'s job; a token in a recipe would land in cards, MLflow and checkpoints
    reject_owned(settings, tuple(key for key in settings if key.startswith("hub_") or key == "push_to_hub"),
                 where, "`llmpipe push` and params.yaml hub (tokens come from HF_TOKEN)")
    reject_owned(settings, ("trust_remote_code", "model_init_kwargs"), where,
                 "its policy (code in a model folder never runs; the stage loads the model itself)")
    for key in POSITIVE_SETTINGS:
        if key in settings and isinstance(settings[key], (int, float)) and settings[key] <= 0:
            raise UserError(f"{where}.{key}` must be above 0 (got {settings[key]})")
    if settings.get("max_steps", -1) <= 0 and settings.get("num_train_epochs", 3) <= 0:
        raise UserError(f"{where}` trains for no steps: set `max_steps` or `num_train_epochs` above 0")


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


def training_arguments(cls: type, settings: dict, checkpoints: str, job: Stage, **defaults: Any):
    """`TrainingArguments` (or a subclass such as TRL's `SFTConfig`) from the recipe's `training`
    section (checked by `begin`); llmpipe owns where checkpoints go and where metrics are reported. Trainer
    counts the input tokens (for throughput.Throughput) unless `defaults` says otherwise."""
    defaults = {**fast_defaults(), "include_num_input_tokens_seen": "non_padding", **defaults}
    try:
        return cls(**{**defaults, **settings}, output_dir=checkpoints, report_to=job.tracker.report_to)
    except ValueError as err:
        raise UserError(f"{job.recipe_path}: training: {err}") from None


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


def instructions_file(job: Stage) -> Path:
    """`instructions.yaml` beside the stage's recipe: the one split and prompt format of sft, lora and
    evaluate (DVC tracks it as a param of all three)."""
    return job.recipe_path.parent / "instructions.yaml"


def instruction_splits(job: Stage) -> tuple[dict[str, list[dict]], instructions.InstructionTask]:
    """The instruction data cut as `instructions.yaml` says, and those settings (the prompt format)."""
    task = config.load(instructions.InstructionTask, instructions_file(job))
    return task.splits(job.params.instruction_data, instructions_file(job)), task


def begin(args: argparse.Namespace, name: str, schema: type) -> Stage:
    """Load params and the recipe (with --set applied); nothing heavy happens before this succeeds."""
    pipeline = pipeline_params.load(args.params)
    recipe_path = Path(args.recipe) if args.recipe else pipeline.recipe_file(name)
    recipe = config.load(schema, recipe_path, args.overrides, args.changes)
    if isinstance(getattr(recipe, "training", None), dict):
        check_training(recipe.training, recipe_path)
    # a run of the stage with a named set of changes (the adaptation experiment's methods) is its own MLflow
    # run and registered model: classify-probe beside classify
    label = f"{name}-{args.changes.rpartition(':')[2].rpartition('.')[2]}" if args.changes else name
    tracker = StageRun(label, recipe_path.parent.name, pipeline.mlflow)
    return Stage(name, pipeline, recipe, recipe_path, Path(args.metrics), tracker, time.perf_counter())
