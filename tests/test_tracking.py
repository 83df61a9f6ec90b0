import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmpipe.errors import UserError
from llmpipe.params import MlflowParams
from llmpipe.runtime import tracking


def test_queued_experiments_log_into_the_repository_store(tmp_path, monkeypatch):
    inside = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.repo_root() == tmp_path / "repo"
    assert tracking.tracking_uri(MlflowParams()) == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(MlflowParams(tracking_uri="http://127.0.0.1:5000")) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere.db")
    assert tracking.tracking_uri(MlflowParams(tracking_uri="http://127.0.0.1:5000")) == "sqlite:////elsewhere.db"


def test_a_tracking_uri_that_does_not_parse_is_named(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://[::1")
    with pytest.raises(UserError, match=r"MLflow tracking URI http://\[::1 does not parse .*fix MLFLOW_TRACKING_URI"):
        tracking.answering_uri(MlflowParams())


def test_pipeline_id_comes_from_the_environment_or_a_dvc_ancestor(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMPIPE_PIPELINE_ID", "nightly-42")
    assert tracking.pipeline_id() == "nightly-42"
    monkeypatch.delenv("LLMPIPE_PIPELINE_ID")
    assert tracking.pipeline_id() is None  # pytest has no dvc ancestor

    # a stage started (through a shell, as DVC does) by a process named `dvc` belongs to its run
    fake_dvc = tmp_path / "dvc"
    fake_dvc.write_text(
        f"#!{sys.executable}\nimport os, subprocess, sys\n"
        "print(os.getpid())\n"
        "sys.stdout.flush()\n"
        "subprocess.run(['sh', '-c', sys.executable + ' -c \"from llmpipe.runtime.tracking import pipeline_id; print(pipeline_id())\"'])\n"
    )
    fake_dvc.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    dvc_pid, stage_id = subprocess.run([str(fake_dvc), "repro"], capture_output=True, text=True, env=env).stdout.split()
    assert stage_id.startswith(f"dvc-{dvc_pid}-")


def test_only_rank_zero_tracks(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    run = tracking.StageRun("pretrain", "tiny", MlflowParams())
    assert not run.enabled and run.report_to == []
    with run:
        run.log_metrics({"x": 1.0})  # a no-op, not an error


def test_the_pipeline_run_spans_its_stages_and_fails_with_one(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("LLMPIPE_PIPELINE_ID", "nightly-7")
    monkeypatch.chdir(tmp_path)
    with tracking.StageRun("tokenizer", "test", MlflowParams()) as first:
        pass
    parent = MlflowClient().get_run(first.parent_id).info
    assert parent.status == "FINISHED"
    with pytest.raises(RuntimeError), tracking.StageRun("corpus", "test", MlflowParams()) as second:
        assert MlflowClient().get_run(second.parent_id).info.status == "RUNNING"  # open while a stage runs
        raise RuntimeError("the stage failed")
    assert second.parent_id == first.parent_id
    parent, stage = MlflowClient().get_run(first.parent_id).info, MlflowClient().get_run(second.run_id).info
    assert parent.status == "FAILED" and parent.end_time >= stage.end_time


def test_each_judged_answer_keeps_its_own_score_when_an_instruction_repeats(tmp_path, monkeypatch):
    """The test split holds the same instruction twice with different references: each trace gets its row's score."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    asked = [{"role": "user", "content": "Use 'innovative' in a sentence."}]
    examples = [{"messages": asked, "response": "It is innovative.", "reference": reference,
                 "feedback": [{"name": "judge_score", "value": score, "rationale": f"scored {score}", "error": None}]}
                for reference, score in (("An innovative idea.", 80), ("Innovative designs sell.", 20))]
    with tracking.StageRun("evaluate", "test", MlflowParams()) as run:
        run.log_evaluation("sft", examples, "a judge")
    client = MlflowClient()
    (evaluation,) = client.search_runs([client.get_experiment_by_name("llmpipe-evaluations").experiment_id], "tags.`llmpipe.model` = 'sft'")
    traces = client.search_traces(locations=[evaluation.info.experiment_id], run_id=evaluation.info.run_id)
    scored = {}
    for trace in traces:
        assessments = {a.name: a for a in trace.info.assessments}
        scored[assessments["expected_response"].value] = assessments["judge_score"].value
    assert scored == {"An innovative idea.": 80, "Innovative designs sell.": 20}
    assert {trace.info.request_preview for trace in traces} == {"Use 'innovative' in a sentence."}  # as a person reads it
    assert evaluation.info.run_name == "sft (test)" and evaluation.data.metrics["judge_score/mean"] == 50


def test_the_evaluations_experiment_lists_only_the_judged_models_at_its_top_level(tmp_path, monkeypatch):
    """MLflow 3.17's Evaluation runs list is every active run of an experiment without a logged model (the UI's
    useGetExperimentRunsQuery keeps the runs whose outputs.modelOutputs is empty), its names indented by nesting:
    the judged models' runs have an experiment of their own, top-level, linked to the pipeline by tags."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("LLMPIPE_PIPELINE_ID", "nightly-8")
    monkeypatch.chdir(tmp_path)
    with tracking.StageRun("tokenizer", "test", MlflowParams()) as tokenizer:
        tokenizer.log_metrics({"vocab_size": 300})
    example = {"messages": [{"role": "user", "content": "Name a colour."}], "response": "Blue.", "reference": "Red.",
               "feedback": [{"name": "judge_score", "value": 40, "rationale": "likeliest 40", "error": None}]}
    with tracking.StageRun("evaluate", "test", MlflowParams()) as evaluate:
        for model in ("sft", "lora"):
            evaluate.log_evaluation(model, [example], "a judge")
        evaluate.log_metrics({"sft": {"judge_mean": 40}})  # the stage's own run and experiment are active again
    client = MlflowClient()
    stages = client.get_experiment_by_name("llmpipe").experiment_id
    evaluations = client.get_experiment_by_name("llmpipe-evaluations").experiment_id

    listed = [run for run in client.search_runs([evaluations]) if not run.outputs.model_outputs]  # what the list shows
    assert sorted(run.info.run_name for run in listed) == ["lora (test)", "sft (test)"]
    for run in listed:
        assert "mlflow.parentRunId" not in run.data.tags and "llmpipe.stage" not in run.data.tags
        assert run.data.tags["llmpipe.stage_run"] == evaluate.run_id and run.data.tags["llmpipe.pipeline_run"] == evaluate.parent_id
        assert len(client.search_traces(locations=[evaluations], run_id=run.info.run_id)) == 1
    trained = client.search_runs([stages])
    assert sorted(run.info.run_name for run in trained) == ["evaluate", "pipeline (test)", "tokenizer"]
    assert not client.search_traces(locations=[stages])  # no judged answer among the stages
    stage = client.get_run(evaluate.run_id)
    assert stage.data.metrics["sft.judge_mean"] == 40 and stage.data.tags["llmpipe.evaluations"] == "llmpipe-evaluations"
