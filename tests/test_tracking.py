from pathlib import Path

from llmpipe import tracking
from llmpipe.params import MlflowParams


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


def test_pipeline_id_comes_from_the_environment_or_a_dvc_ancestor(monkeypatch):
    monkeypatch.setenv("LLMPIPE_PIPELINE_ID", "nightly-42")
    assert tracking.pipeline_id() == "nightly-42"
    monkeypatch.delenv("LLMPIPE_PIPELINE_ID")
    assert tracking.pipeline_id() is None  # pytest has no dvc ancestor


def test_only_rank_zero_tracks(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    run = tracking.StageRun("pretrain", "tiny", MlflowParams())
    assert not run.enabled and run.report_to == []
    with run:
        run.log_metrics({"x": 1.0})  # a no-op, not an error
