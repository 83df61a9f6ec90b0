"""What every pipeline stage shares: its command-line options, its recipe (checked where it enters), its MLflow
run, its ending."""

import argparse
import dataclasses
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmpipe import config
from llmpipe import params as pipeline_params
from llmpipe.data import instructions
from llmpipe.errors import UserError
from llmpipe.hub import cards
from llmpipe.runtime import atomic
from llmpipe.runtime.tracking import StageRun


def add_common_arguments(parser: argparse.ArgumentParser, stage: str, schema: type, recipe_of: str | None = None) -> None:
    """`recipe_of`: the stage whose recipe file this one reads (its own by default)."""
    parser.add_argument("--params", default="params.yaml", help="pipeline params: active recipe, data, MLflow (default: %(default)s)")
    parser.add_argument("--recipe", help=f"the stage's recipe (default: recipes/<recipe in params>/{recipe_of or stage}.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override one recipe value{_example_setting(schema)} (YAML value; wins over the recipe file; repeatable)",
    )
    parser.add_argument(
        "--set-from", dest="changes", metavar="FILE:NAME",
        help="apply the recipe values under NAME in the YAML file FILE before any --set, e.g. "
        "recipes/tiny/adaptation.yaml:methods.probe (how the adaptation experiment runs each method)",
    )
    parser.add_argument("--metrics", default=f"metrics/{stage}.json", help="metrics JSON to write (default: %(default)s)")
    parser.epilog = "recipe keys: " + describe(schema)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _example_setting(schema: type) -> str:
    """", e.g. --set KEY=VALUE" with one of the stage's own recipe keys (nothing where none is a plain value)."""
    fields = dataclasses.fields(schema)
    if any(field.name == "training" for field in fields):
        return ", e.g. --set training.learning_rate=3e-4"
    plain = next((field for field in fields if type(field.default) in (int, float, str)), None)
    return f", e.g. --set {plain.name}={plain.default}" if plain else ""


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


def check_training(settings: dict, recipe_path: Path) -> None:
    """The recipe's `training` section, checked before anything is logged or trained."""
    where = f"{recipe_path}: `training"
    reject_owned(settings, ("output_dir", "report_to"), where, "--checkpoints and params.yaml mlflow")
    # pushing is `llmpipe push`'s job; a token in a recipe would land in cards, MLflow and checkpoints
    reject_owned(settings, tuple(key for key in settings if key.startswith("hub_") or key == "push_to_hub"),
                 where, "`llmpipe push` and params.yaml hub (tokens come from HF_TOKEN)")
    reject_owned(settings, ("trust_remote_code", "model_init_kwargs"), where,
                 "its policy (code in a model folder never runs; the stage loads the model itself)")
    for key in ("seed", "data_seed"):
        if isinstance(settings.get(key), int) and settings[key] not in config.SEEDS:
            raise UserError(f"{where}.{key}` must be {config.SEED_RULE} (got {settings[key]})")
    if settings.get("max_steps", -1) <= 0 and settings.get("num_train_epochs", 3) <= 0:
        raise UserError(f"{where}` trains for no steps: set `max_steps` or `num_train_epochs` above 0")


def instructions_file(job: Stage) -> Path:
    """`instructions.yaml` beside the stage's recipe: the one split and prompt format of sft, lora and
    evaluate (DVC tracks it as a param of all three)."""
    return job.recipe_path.parent / "instructions.yaml"


def instruction_splits(job: Stage) -> tuple[dict[str, list[dict]], instructions.InstructionTask]:
    """The instruction data cut as `instructions.yaml` says, and those settings (the prompt format)."""
    task = config.load(instructions.InstructionTask, instructions_file(job))
    return task.splits(job.params.instruction_data, instructions_file(job)), task


def begin(args: argparse.Namespace, name: str, schema: type, recipe_of: str | None = None) -> Stage:
    """Load params and the recipe (with --set applied); nothing heavy happens before this succeeds. A stage that
    reads another's recipe (`recipe_of`) takes from it only the sections its `schema` has."""
    pipeline = pipeline_params.load(args.params)
    recipe_path = Path(args.recipe) if args.recipe else pipeline.recipe_file(recipe_of or name)
    sections = tuple(field.name for field in dataclasses.fields(schema)) if recipe_of else None
    recipe = config.load(schema, recipe_path, args.overrides, args.changes, sections)
    if isinstance(getattr(recipe, "training", None), dict):
        check_training(recipe.training, recipe_path)
    if getattr(args, "output", None):
        atomic.check_replaceable(args.output, "--output")
    for option in ("metrics", "plots", "figure"):  # the files a stage writes, where it has the option
        if getattr(args, option, None):
            atomic.check_file_target(getattr(args, option), f"--{option}")
    # a run of the stage with a named set of changes (the adaptation experiment's methods) is its own MLflow
    # run and registered model: classify-probe beside classify
    label = f"{name}-{args.changes.rpartition(':')[2].rpartition('.')[2]}" if args.changes else name
    tracker = StageRun(label, recipe_path.parent.name, pipeline.mlflow)
    return Stage(name, pipeline, recipe, recipe_path, Path(args.metrics), tracker, time.perf_counter())
