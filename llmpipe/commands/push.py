"""`llmpipe push STAGE`: a trained artifact to the Hugging Face Hub in one commit (`hub.push`), its card
refreshed for the Hub (the repository as the usage snippet's model, the judge's scores of these exact
weights, the base model's Hub id)."""

import argparse
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from llmpipe import params as pipeline_params
from llmpipe.errors import UserError
from llmpipe.hub import cards
from llmpipe.hub.push import FOLDERS, evaluation_of, operations, require_hub, scored_folder, send, stage_folder
from llmpipe.runtime.tracking import StageRun


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
    if cards.KINDS[facts.artifact].library_name == "peft":  # an adapter is nothing without its base
        raise UserError(
            f"the adapter's base is the local folder {facts.base_model}: push it first, then pass "
            "--base-model USER/NAME (or set hub.namespace in params.yaml)"
        )
    return None


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
    for stage in stages:  # every folder before the first push: no half-pushed set of stages
        check_folder(stage, stage_folder(args.artifacts, stage))
    private = hub.private if args.private is None else args.private
    for stage in stages:
        push_one(stage, repo_ids[stage], private, args, params)


def check_folder(stage: str, folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; run `dvc repro` first, or point --artifacts at the folder that holds it")
    if stage != "tokenizer" and not any(folder.glob("*.safetensors")):
        raise UserError(f"{folder}: no weights (*.safetensors) in this folder; run `dvc repro` to write the {stage} stage again")


def push_one(stage: str, repo_id: str, private: bool, args: argparse.Namespace, params: pipeline_params.Params) -> None:
    hub = params.hub
    folder = stage_folder(args.artifacts, stage)
    facts = cards.load_facts(folder)
    base = hub_base(facts, args, hub)
    evaluation = evaluation_of(scored_folder(folder), Path(args.evaluation))
    if facts.artifact in ("sft", "lora", "lora-merged", *cards.PREFERENCE_TUNED) and evaluation is None:
        found = "has no scores of the weights" if Path(args.evaluation).is_file() else "does not exist, so it has no scores of the weights"
        print(f"push: {args.evaluation} {found} in {folder}; the card leaves the judge out (run `dvc repro`)")
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
