"""Stage `adaptation`: probing, lightweight and full fine-tuning side by side. dvc.yaml's `adapt` stages run
the classify stage once per method named in params.yaml `adaptation` (same split, seed and data; each with
its own budget, in `methods` of this stage's recipe); this stage gathers their metrics, and the classify
stage's own run as the method classify.yaml trains (run once, not twice), into one table
(metrics/adaptation.json) and one figure: test accuracy against the share of parameters trained, beside the
TF-IDF baseline."""

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from llmpipe.errors import UserError
from llmpipe.metrics import charts
from llmpipe.runtime import atomic
from llmpipe.stages import base

REPORTED = ("trainable", "test_accuracy", "validation_accuracy", "trainable_parameters", "trainable_fraction", "train_step_seconds", "seconds")


@dataclass
class AdaptationRecipe:
    # name -> the classify.yaml values that method changes (its `trainable` at least); the adapt stage of a
    # name runs `llmpipe classify --set-from recipes/<recipe>/adaptation.yaml:methods.<name>`
    methods: dict[str, dict] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_common_arguments(parser, "adaptation", AdaptationRecipe)
    parser.add_argument("--runs", default="metrics/adaptation", help="the adapt stages' classify metrics, <method>.json (default: %(default)s)")
    parser.add_argument(
        "--classify-metrics", default="metrics/classify.json",
        help="the classify stage's metrics: its run joins the table as the method classify.yaml trains (default: %(default)s)",
    )
    parser.add_argument("--figure", default="plots/adaptation.png", help="figure to write (default: %(default)s)")


def read_run(path: Path, missing: str, rerun: str) -> dict:
    """A classify run's metrics, with every figure the table reports (a file from an older run may lack one)."""
    if not path.is_file():
        raise UserError(f"{path}: {missing}; run `{rerun}`")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON (line {err.lineno}); run `{rerun}` again") from None
    lacking = [key for key in (*REPORTED, "baseline_test_accuracy") if key not in run]
    if lacking:
        raise UserError(f"{path}: no `{lacking[0]}` (metrics of an older classify run?); run `{rerun}` again")
    return run


def gather(runs: Path, names: list[str], classify_metrics: Path) -> tuple[dict[str, dict], float]:
    """Each method's figures, and the TF-IDF baseline's test accuracy (the same split, so the same for all).
    The classify stage's run joins as the method classify.yaml trains (its `trainable`) unless an adapt stage
    runs that method with its own settings; then the adapt run's figures stand."""
    staged = read_run(classify_metrics, "no metrics of the classify stage", "dvc repro classify")
    found = {staged["trainable"]: staged} | {
        name: read_run(runs / f"{name}.json", f"no metrics for method `{name}` (params.yaml `adaptation`)", f"dvc repro adapt@{name}")
        for name in names
    }
    methods = {name: {key: run[key] for key in REPORTED} for name, run in found.items()}
    baselines = {run["baseline_test_accuracy"] for run in found.values()}
    if len(baselines) > 1:
        raise UserError(f"{runs}: the methods' TF-IDF baselines differ ({sorted(baselines)}), so their splits do; "
                        "keep `split` out of adaptation.yaml's methods and run `dvc repro` again")
    return methods, baselines.pop()


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "adaptation", AdaptationRecipe)
    names = job.params.adaptation
    unknown = [name for name in names if name not in job.recipe.methods]
    if unknown:
        raise UserError(f"{args.params}: `adaptation` names {', '.join(unknown)}, which {job.recipe_path} `methods` does not define")
    methods, baseline = gather(Path(args.runs), names, Path(args.classify_metrics)) if names else ({}, None)
    with job.tracker:
        job.log_config()
        figure = Path(args.figure)
        with atomic.scratch(figure) as work:
            charts.adaptation(methods, baseline, work / figure.name)
            os.replace(work / figure.name, figure)
        job.tracker.log_artifact(figure, "adaptation")
        job.tracker.log_table({"method": list(methods), **{key: [m[key] for m in methods.values()] for key in REPORTED}},
                              "adaptation/methods.json")
        job.finish({"baseline_test_accuracy": baseline, "methods": methods}, f"{describe(methods, baseline)} -> {figure}")


def describe(methods: dict[str, dict], baseline: float | None) -> str:
    if not methods:
        return "no adaptation methods compared (params.yaml `adaptation` is empty)"
    best = max(methods, key=lambda name: methods[name]["test_accuracy"])
    lightest = min(methods, key=lambda name: methods[name]["trainable_parameters"])
    return (
        f"{len(methods)} adaptation methods: best {best} {methods[best]['test_accuracy']:.2%} "
        f"({methods[best]['trainable_fraction']:.2%} of parameters trained), lightest {lightest} "
        f"{methods[lightest]['test_accuracy']:.2%} ({methods[lightest]['trainable_fraction']:.4%}), TF-IDF {baseline:.2%}"
    )
