"""The push core: a trained folder as one list of `CommitOperationAdd` (its card refreshed) sent in one
`create_commit`. Not `upload_folder`: with hf_xet installed it bypasses `create_commit`, and one list of
operations is also what a dry run shows. The token is huggingface_hub's business (HF_TOKEN or
`hf auth login`): llmpipe never reads, prints or logs it."""

import json
from pathlib import Path

import requests
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.errors import HTTPError as TransportError  # what huggingface_hub's HTTP client raises offline

from llmpipe import artifacts
from llmpipe.errors import UserError
from llmpipe.runtime import redact

FOLDERS = {  # what can be pushed -> its folder under --artifacts
    "tokenizer": "tokenizer",
    "pretrain": "pretrain",
    "classify": "classify",
    "sft": "sft",
    "lora": "lora/adapter",
    "lora-merged": "lora/merged",
    "dpo": "dpo",
    "dpo-merged": "dpo/merged",
}
ADAPTER_FOLDERS = {"dpo": "dpo/adapter"}  # where the stage saves instead when its recipe trains a LoRA adapter
PICKLES = {".bin", ".pt", ".pth", ".pkl", ".pickle"}  # never uploaded: weights go as safetensors only
REFUSED = {  # HTTP status of a refused push -> what to do
    400: "fix what the Hub names (a card's metadata: params.yaml hub.license / hub.language)",
    401: "the token is missing or not valid: `hf auth login`, or set HF_TOKEN",
    403: "the token cannot write there: use a write token, or a namespace you belong to",
    404: "the namespace does not exist, or the token cannot see it",
}


def stage_folder(artifacts_dir: str | Path, stage: str) -> Path:
    """What `stage` names under `artifacts_dir`: its adapter where its recipe trained one (dpo with
    `trainable: lora` saves adapter/ beside merged/, as the lora stage does)."""
    adapter = Path(artifacts_dir) / ADAPTER_FOLDERS.get(stage, FOLDERS[stage])
    return adapter if adapter.is_dir() else Path(artifacts_dir) / FOLDERS[stage]


def scored_folder(folder: Path) -> Path:
    """The folder whose weights the evaluate stage scores for `folder`: an adapter's merged model beside it."""
    return folder.parent / "merged" if folder.name == "adapter" else folder


def evaluation_of(folder: Path, evaluate_metrics: Path) -> dict | None:
    """The evaluate stage's scores of exactly these weights (matched by their sha256), with the judge named."""
    if not evaluate_metrics.is_file():
        return None
    try:
        scores = json.loads(evaluate_metrics.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{evaluate_metrics}: not valid JSON ({err}); run `dvc repro` to write it again") from None
    digest = artifacts.weights_digest(folder)
    for entry in scores.values():
        if isinstance(entry, dict) and digest and entry.get("weights_sha256") == digest:
            return {**entry, "judge": scores.get("judge"), "judge_model": scores.get("judge_model"),
                    "judge_validity": scores.get("validity"), "headline_agreement": scores.get("headline")}
    return None


def operations(folder: Path, card: ModelCard, base: str | None) -> list[CommitOperationAdd]:
    """Every file of the folder but pickles and local cards (PEFT's, in a classifier's `adapter/`, names
    a local base), then the refreshed card; an adapter's config names its base by Hub id, so
    `AutoPeftModelForCausalLM.from_pretrained(repo)` finds it."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if path.suffix in PICKLES or path.name == "README.md":
            continue
        content: bytes | Path = path
        if path.name == "adapter_config.json" and base:
            adapter = json.loads(path.read_text(encoding="utf-8")) | {"base_model_name_or_path": base}
            content = (json.dumps(adapter, indent=2) + "\n").encode()
        found.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=content))
    found.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    return found


def require_hub() -> None:
    """Fail at once without the network or a token (a Hub call would otherwise retry for ~30 s)."""
    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: pushing needs the network; unset it, or look first with --dry-run")
    try:
        requests.head(constants.ENDPOINT, timeout=5)  # any answer will do; requests honours proxy settings
    except requests.RequestException as err:
        raise UserError(
            f"cannot reach {redact.url(constants.ENDPOINT)} ({type(err).__name__}); check the network, or look first with --dry-run"
        ) from None
    if get_token() is None:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token that can write)")


def send(repo_id: str, ops: list[CommitOperationAdd], private: bool, revision: str | None, message: str) -> tuple[str, bool]:
    """The commit's URL, and whether the repository is private (an existing one keeps its visibility)."""
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, ops, commit_message=message, revision=revision)
        is_private = bool(api.repo_info(repo_id).private)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        said = " ".join((err.server_message or "").split())[:500] or (err.response.reason_phrase if err.response is not None else "")
        fix = REFUSED.get(status, "run it again later, or look first with --dry-run")
        raise UserError(f"{repo_id}: the Hub refused the push (HTTP {status}: {said}); {fix}") from None
    except TransportError as err:
        raise UserError(f"{repo_id}: the push failed on the network ({type(err).__name__}: {err}); run it again") from None
    return commit.commit_url, is_private


