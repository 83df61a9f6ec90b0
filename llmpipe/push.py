"""`llmpipe push STAGE`: a trained artifact to the Hugging Face Hub in one commit, its card refreshed for the
Hub (the repository as the usage snippet's model, the judge's scores of these exact weights, the base
model's Hub id). Not `upload_folder`: with hf_xet installed it bypasses `create_commit`; one list of
`CommitOperationAdd` is also what `--dry-run` shows. The token is huggingface_hub's business (HF_TOKEN
or `hf auth login`): llmpipe never reads, prints or logs it."""

import argparse
import json
from pathlib import Path

import requests
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.errors import HTTPError as TransportError  # what huggingface_hub's HTTP client raises offline
from huggingface_hub.utils import validate_repo_id

from llmpipe import artifacts, cards, params as pipeline_params, redact
from llmpipe.errors import UserError
from llmpipe.tracking import StageRun

FOLDERS = {  # what can be pushed -> its folder under --artifacts
    "tokenizer": "tokenizer",
    "pretrain": "pretrain",
    "classify": "classify",
    "sft": "sft",
    "lora": "lora/adapter",
    "lora-merged": "lora/merged",
}
SCORED_AS = {"lora": "lora/merged"}  # the evaluate stage scores the adapter as its merged model
PICKLES = {".bin", ".pt", ".pth", ".pkl", ".pickle"}  # never uploaded: weights go as safetensors only
REFUSED = {  # HTTP status of a refused push -> what to do
    400: "fix what the Hub names (a card's metadata: params.yaml hub.license / hub.language)",
    401: "the token is missing or not valid: `hf auth login`, or set HF_TOKEN",
    403: "the token cannot write there: use a write token, or a namespace you belong to",
    404: "the namespace does not exist, or the token cannot see it",
}


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
            return {**entry, "judge": scores.get("judge"), "judge_model": scores.get("judge_model")}
    return None


def hub_base(facts: cards.CardFacts, args: argparse.Namespace, hub: pipeline_params.HubParams) -> str | None:
    """The base model as a Hub id: --base-model, the recipe's Hub id, or the pushed repository of the
    pipeline's own base folder (params.yaml `hub.namespace`). None when it has no Hub id."""
    if args.base_model or not facts.base_model:
        return args.base_model
    base = Path(facts.base_model)
    if not base.is_absolute():  # the stage ran in the repository that holds --artifacts
        base = Path(args.artifacts).resolve().parent / base
    if not base.exists():
        return facts.base_model  # a Hub id, e.g. gpt2
    own = {Path(args.artifacts, folder).resolve(): name for name, folder in FOLDERS.items()}
    if base.resolve() in own and hub.namespace:
        return hub.repo_id(own[base.resolve()])
    if facts.artifact == "lora":
        raise UserError(
            f"the adapter's base is the local folder {facts.base_model}: push it first, then pass "
            "--base-model USER/NAME (or set hub.namespace in params.yaml)"
        )
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stages", nargs="*", metavar="STAGE", help=f"what to push: {', '.join(FOLDERS)}")
    parser.add_argument("--repo-id", help="USER/NAME on the Hub (one STAGE); default <hub.namespace>/<hub.name_prefix>-<stage> from params")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_const", const=True,
                            help="make a new repository private (default: params.yaml hub.private, true)")
    visibility.add_argument("--public", dest="private", action="store_const", const=False,
                            help="make a new repository public")
    parser.add_argument("--revision", help="branch to commit to (created if missing; default: main)")
    parser.add_argument("--base-model", help="Hub id of the model this one was trained from (default: from the recipe or params hub)")
    parser.add_argument("--dry-run", action="store_true", help="print the files and the card of each commit; send nothing")
    parser.add_argument("--from-params", action="store_true", help="push params.yaml hub.stages if hub.push is true (what `dvc repro` runs)")
    parser.add_argument("--params", default="params.yaml", help="pipeline params (default: %(default)s)")
    parser.add_argument("--artifacts", default="artifacts", help="where the stages saved their folders (default: %(default)s)")
    parser.add_argument("--evaluation", default="metrics/evaluate.json", help="the evaluate stage's metrics (default: %(default)s)")


def main(args: argparse.Namespace) -> None:
    params = pipeline_params.load(args.params)
    hub = params.hub
    stages = args.stages
    if args.from_params:
        if not hub.push:
            print("push: off (params.yaml hub.push is false); nothing sent")
            return
        stages = stages or hub.stages
    if not stages:
        raise UserError("name what to push (e.g. `llmpipe push sft --repo-id USER/NAME`), or pass --from-params")
    if unknown := [stage for stage in stages if stage not in FOLDERS]:
        raise UserError(f"cannot push {', '.join(unknown)}: choose from {', '.join(FOLDERS)}")
    if (args.repo_id or args.base_model) and len(stages) > 1:
        raise UserError("--repo-id and --base-model name one repository: push one STAGE at a time with them")
    if not args.repo_id and not hub.namespace:
        raise UserError("pass --repo-id USER/NAME, or set hub.namespace in params.yaml")
    repo_ids = {stage: args.repo_id or hub.repo_id(stage) for stage in stages}
    for repo_id in repo_ids.values():
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            where = "--repo-id" if args.repo_id else "params.yaml hub.namespace / hub.name_prefix"
            raise UserError(f"{repo_id!r} is not a Hub repository id ({err}); fix {where} (USER/NAME)") from None
    if not args.dry_run:
        require_hub()
    private = hub.private if args.private is None else args.private
    for stage in stages:
        push_one(stage, repo_ids[stage], private, args, params)


def push_one(stage: str, repo_id: str, private: bool, args: argparse.Namespace, params: pipeline_params.Params) -> None:
    hub = params.hub
    folder = Path(args.artifacts) / FOLDERS[stage]
    facts = cards.load_facts(folder)
    base = hub_base(facts, args, hub)
    evaluation = evaluation_of(Path(args.artifacts) / SCORED_AS.get(stage, FOLDERS[stage]), Path(args.evaluation))
    if facts.artifact in ("sft", "lora", "lora-merged") and evaluation is None:
        print(f"push: {args.evaluation} has no scores of the weights in {folder}; the card leaves the judge out (run `dvc repro`)")
    card = cards.model_card(facts, repo_id, hub.license, hub.language, evaluation, base, on_hub=True, revision=args.revision)
    ops = operations(folder, card, base)
    size = sum(Path(op.path_or_fileobj).stat().st_size if isinstance(op.path_or_fileobj, (str, Path)) else len(op.path_or_fileobj) for op in ops)

    def where(is_private: bool) -> str:
        return repo_id + (f"@{args.revision}" if args.revision else "") + (" (private)" if is_private else " (public)")

    if args.dry_run:
        print(f"push --dry-run: {folder} -> {where(private)}, one commit of {len(ops)} files ({size / 1e6:.1f} MB):")
        for op in ops:
            print(f"  add {op.path_in_repo}")
        print(f"--- {repo_id}/README.md ---\n{card}")
        return
    with StageRun("push", facts.recipe, params.mlflow) as tracker:
        url, is_private = send(repo_id, ops, private, args.revision, f"llmpipe: {stage} (recipe {facts.recipe})")
        tracker.log_config({"repo_id": repo_id, "revision": args.revision or "main", "private": is_private,
                            "files": len(ops), "base_model": base or "", "commit_url": url})
        tracker.log_text(str(card), f"{stage}/README.md")
    kept = ", as it already was" if is_private != private else ""
    print(f"push: {folder} -> {where(is_private)}{kept}: {len(ops)} files ({size / 1e6:.1f} MB) in one commit, {url}")
