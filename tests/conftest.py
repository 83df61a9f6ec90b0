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
VERDICT = REPO / "data" / "text" / "the-verdict.txt"


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """`llmpipe ARGS` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "llmpipe", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600,
    )


@pytest.fixture(scope="session")
def verdict_texts() -> list[str]:
    from llmpipe.documents import read_documents

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
    """The repository's sources (no venv, outputs, caches or git history) in `destination`."""
    skip = {".venv", ".git", "artifacts", "checkpoints", "mlruns", "mlflow.db", ".pytest_cache", "__pycache__", "cache", "tmp"}
    shutil.copytree(REPO, destination, ignore=lambda _dir, names: [n for n in names if n in skip or n.endswith(".egg-info")])
    return destination
