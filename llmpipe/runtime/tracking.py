"""MLflow: one parent run per pipeline run, one nested run per stage.

Stages are separate processes (DVC starts each one), so a stage finds its pipeline's parent run by a
tag: the id of the `dvc repro` / `dvc exp run` process that started it (or LLMPIPE_PIPELINE_ID), and
nests under it with the `mlflow.parentRunId` tag. Only rank 0 of a multi-process launch tracks.
Training metrics by step come from Trainer's own MLflow callback, which logs into the run started here.
The evaluate stage's judged answers go to an experiment of their own, `<experiment>-evaluations`, one top-level
run per judged model linked to the pipeline by tags: MLflow 3.17's "Evaluation runs" list shows every run of an
experiment that logged no model, and indents a nested run's name until it is 0 px wide.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmpipe import artifacts
from llmpipe.config import flatten
from llmpipe.errors import UserError
from llmpipe.params import MlflowParams
from llmpipe.runtime import redact

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# mlflow.genai.evaluate scores in 10 threads by default; against the SQLite store on a busy machine they exhaust
# SQLAlchemy's connection pool and traces are dropped (measured on 2 cores). The scores are computed already,
# so no call needs the rate limit meant for LLM APIs (by default 10 a second, which made 110 rows take 8 s, not 5).
os.environ.setdefault("MLFLOW_GENAI_EVAL_MAX_WORKERS", "2")
os.environ.setdefault("MLFLOW_GENAI_EVAL_PREDICT_RATE_LIMIT", "0")
os.environ.setdefault("MLFLOW_GENAI_EVAL_SCORER_RATE_LIMIT", "0")

PIPELINE_TAG = "llmpipe.pipeline_id"
EVALUATIONS = "{}-evaluations"  # the experiment of the judged answers, after the stages' experiment


def repo_root() -> Path:
    """The repository the stage runs in; for `dvc exp run --temp/--queue` (run in .dvc/tmp/exps/...)
    the repository that holds it, so every experiment logs into the same store."""
    cwd = Path.cwd().resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri(settings: MlflowParams) -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or settings.tracking_uri
        or f"sqlite:///{repo_root() / 'mlflow.db'}"
    )


def answering_uri(settings: MlflowParams) -> str:
    """The tracking URI, once a server behind it answers (a dead one would make MLflow retry for minutes,
    after the stage had trained). `unreachable: local` falls back to the repository's own store."""
    uri = tracking_uri(settings)
    try:
        scheme = urlsplit(uri).scheme
    except ValueError as err:
        raise UserError(f"MLflow tracking URI {redact.url(uri)} does not parse ({err}); fix MLFLOW_TRACKING_URI or mlflow.tracking_uri") from None
    if scheme not in ("http", "https"):
        return uri
    import requests

    try:
        status = requests.get(uri.rstrip("/") + "/health", timeout=5).status_code
        if status < 400 or status in (401, 403):  # it answers (credentials are MLflow's business)
            return uri
        reason = f"HTTP {status} at /health: is it an MLflow server?"
    except requests.RequestException as err:
        reason = type(err).__name__
    local = f"sqlite:///{repo_root() / 'mlflow.db'}"
    if settings.unreachable == "local":
        print(f"mlflow: {redact.url(uri)} does not answer ({reason}); logging to {local} instead", flush=True)
        return local
    raise UserError(
        f"MLflow tracking server {redact.url(uri)} does not answer ({reason}); start it, or set "
        f"`mlflow.unreachable: local` in params.yaml to log to {local}, or `mlflow.enabled: false`"
    )


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def pipeline_id() -> str | None:
    """Identify the pipeline run this stage belongs to: the nearest `dvc` ancestor process."""
    if os.environ.get("LLMPIPE_PIPELINE_ID"):
        return os.environ["LLMPIPE_PIPELINE_ID"]
    import psutil

    for process in psutil.Process().parents():
        try:
            argv = process.cmdline()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if any(Path(arg).name == "dvc" for arg in argv[:2]):
            return f"dvc-{process.pid}-{process.create_time():.0f}"
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _requirements(peft: bool) -> list[str]:
    from importlib.metadata import version

    packages = ["torch", "transformers", "tokenizers", "safetensors", "accelerate", *(["peft"] if peft else [])]
    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


class StageRun:
    """The MLflow run of one stage; every method is a no-op when tracking is off or on ranks > 0."""

    def __init__(self, stage: str, recipe: str, settings: MlflowParams):
        self.stage, self.recipe, self.settings = stage, recipe, settings
        self.enabled = settings.enabled and is_main_process()
        self._mlflow = None  # the module, imported only when tracking (it takes seconds)
        self.run_id = self.parent_id = None  # this stage's run; the pipeline's, open while this stage runs
        self.uri = self.experiment_id = None  # the tracking URI that answered; the stages' experiment
        self.tags: dict[str, str] = {}  # the stage run's
        self.model_id = None  # the logged model the run's metrics attach to (MLflow 3 LoggedModel)

    @property
    def report_to(self) -> list[str]:
        """What to pass as TrainingArguments(report_to=...)."""
        return ["mlflow"] if self.enabled else []

    def __enter__(self) -> "StageRun":
        if not self.enabled:
            return self
        import mlflow

        self.uri = answering_uri(self.settings)
        mlflow.set_tracking_uri(self.uri)
        self.experiment_id = self._use_experiment(self.settings.experiment_name)
        tags = {"llmpipe.stage": self.stage, "llmpipe.recipe": self.recipe}
        if commit := _git_commit():
            tags["mlflow.source.git.commit"] = commit
        if exp_name := os.environ.get("DVC_EXP_NAME"):
            tags["dvc.exp_name"] = exp_name
        if (pipeline := pipeline_id()) is not None:
            self.parent_id = tags["mlflow.parentRunId"] = self._parent_run(self.experiment_id, pipeline, tags)
        self.run_id = mlflow.start_run(experiment_id=self.experiment_id, run_name=self.stage, tags=tags).info.run_id
        self.tags, self._mlflow = tags, mlflow
        return self

    def _use_experiment(self, name: str) -> str:
        """Make the experiment `name` the active one (created on first use, with its artifacts beside the store,
        wherever the first stage ran from); its id."""
        import mlflow

        try:
            if mlflow.get_experiment_by_name(name) is None:
                mlflow.create_experiment(name, artifact_location=(repo_root() / "mlruns").as_uri())
            return mlflow.set_experiment(name).experiment_id
        except mlflow.exceptions.MlflowException as err:
            raise UserError(
                f"MLflow at {redact.url(self.uri)} refused the experiment `{name}` "
                f"({str(err).splitlines()[0][:200]}); check mlflow.tracking_uri, or `mlflow.enabled: false`"
            ) from None

    def _parent_run(self, experiment_id: str, pipeline: str, tags: dict[str, str]) -> str:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        found = client.search_runs([experiment_id], f"tags.`{PIPELINE_TAG}` = '{pipeline}'", max_results=1)
        if found:  # open again until this stage ends: the pipeline's run spans its first stage to its last
            client.update_run(found[0].info.run_id, "RUNNING")
            return found[0].info.run_id
        parent_tags = {k: v for k, v in tags.items() if k != "llmpipe.stage"} | {PIPELINE_TAG: pipeline}
        return client.create_run(experiment_id, tags=parent_tags, run_name=f"pipeline ({self.recipe})").info.run_id

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow:
            status = "FINISHED" if exc_type is None else "FAILED"
            self._mlflow.end_run(status)
            if self.parent_id:  # ends with each stage; the next stage of the same pipeline opens it again
                from mlflow.tracking import MlflowClient

                MlflowClient().set_terminated(self.parent_id, status)

    def log_config(self, resolved: dict[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.log_params({key: str(redact.setting(key, value))[:6000] for key, value in resolved.items()})

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        if self._mlflow:
            flat = flatten(metrics)  # nested sections become dotted names, e.g. sft.judge_mean
            numbers = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float))}
            self._mlflow.log_metrics(numbers, model_id=self.model_id)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow:
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_model_folder(self, folder: str | Path) -> None:
        """A folder that is not a model (the tokenizer), as plain artifacts."""
        if self._mlflow and self.settings.log_models:
            self._mlflow.log_artifacts(str(folder), artifact_path=Path(folder).name)

    def register_model(self, folder: str | Path, task: str, card, adapter_base: str | None = None, labels: list[str] | None = None) -> None:
        """The saved model, logged with the `mlflow.transformers` flavor and registered as
        `<experiment>-<stage>`; the stage's metrics then attach to it. A PEFT adapter (`adapter_base`: the
        base model's folder or Hub id; a classifier's `labels`) is logged as an adapter that references its base."""
        if not (self._mlflow and self.settings.log_models):
            return
        import mlflow.transformers

        folder = Path(folder).resolve()  # a relative name such as artifacts/sft looks like a Hub id: MLflow would query the Hub
        model = artifacts.load_for_task(folder, task, adapter_base, labels)
        by_reference = {"base_model_path": str(Path(adapter_base).resolve())} if adapter_base and Path(adapter_base).is_dir() else {}
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": artifacts.load_tokenizer(folder)},
            name="model",
            task=task,
            registered_model_name=f"{self.settings.experiment_name}-{self.stage}",
            model_card=card,  # ours: without one MLflow fetches a card from the Hub
            pip_requirements=_requirements(peft=adapter_base is not None),  # inferring them imports torchvision for PEFT
            **by_reference,
        )
        self.model_id = info.model_id

    def log_text(self, text: str, artifact_file: str) -> None:
        if self._mlflow:
            self._mlflow.log_text(text, artifact_file)

    def log_table(self, columns: dict[str, list], artifact_file: str) -> None:
        if self._mlflow:
            self._mlflow.log_table(data=columns, artifact_file=artifact_file)

    def log_evaluation(self, name: str, examples: list[dict], judge: str) -> None:
        """One model's judged answers as an MLflow GenAI evaluation, in a run `<model> (<recipe>)` of the experiment
        `<experiment>-evaluations`: top-level (the UI's list indents a nested run's name out of sight), tagged with
        the stage's and the pipeline's runs (`llmpipe.stage_run`, `llmpipe.pipeline_run`). Per example the request
        as chat messages (`messages`: MLflow's views show the user's text as a person reads it), the answer, the
        reference, and its `feedback`, computed already (dicts of name, value, rationale and error, the scorer only
        hands them over; the first leads)."""
        if not self._mlflow:
            return
        import mlflow.genai
        from mlflow.entities import Feedback
        from mlflow.tracking import MlflowClient

        def key(inputs: dict, outputs: str, expectations: dict) -> str:  # an instruction may repeat with another reference
            return json.dumps([inputs, outputs, expectations], sort_keys=True)

        data = [
            {"inputs": {"messages": example["messages"]}, "outputs": example["response"],
             "expectations": {"expected_response": example["reference"]}}
            for example in examples
        ]
        given = {key(item["inputs"], item["outputs"], item["expectations"]): example["feedback"] for item, example in zip(data, examples)}

        @mlflow.genai.scorer(name="measures", description=f"the evaluate stage's measures, computed already; judge: {judge}")
        def measures(inputs: dict, outputs: str, expectations: dict) -> list[Feedback]:
            return [Feedback(**feedback) for feedback in given[key(inputs, outputs, expectations)]]

        experiment = EVALUATIONS.format(self.settings.experiment_name)
        self._mlflow.set_tag("llmpipe.evaluations", experiment)  # the stage's run names where its judged answers are
        tags = {k: v for k, v in self.tags.items() if k not in ("llmpipe.stage", "mlflow.parentRunId")}
        tags |= {"llmpipe.model": name, "llmpipe.judge": judge, "llmpipe.stage_run": self.run_id}
        if self.parent_id:
            tags["llmpipe.pipeline_run"] = self.parent_id
        try:  # the active experiment meanwhile, so the evaluation's traces go there too
            evaluations = self._use_experiment(experiment)
            run = MlflowClient().create_run(evaluations, run_name=f"{name} ({self.recipe})", tags=tags)
            # started while the stage's run is active, a fluent run nests in it; resuming one created apart does not
            with self._mlflow.start_run(run_id=run.info.run_id, nested=True):
                mlflow.genai.evaluate(data=data, scorers=[measures])
        finally:
            self._mlflow.set_experiment(experiment_id=self.experiment_id)
