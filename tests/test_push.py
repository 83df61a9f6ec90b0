"""`llmpipe push` against a patched `HfApi` (create_repo/create_branch/create_commit are the network boundary)."""

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
import requests
import yaml
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.hf_api import CommitInfo
from huggingface_hub.utils import hf_raise_for_status
from peft import PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmpipe import adapters, cli
from llmpipe.errors import UserError
from llmpipe.hub import cards, push
from tests.conftest import FAKE_SECRET, REPO, assert_refused, run_cli

FAKE_TOKEN = FAKE_SECRET


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_model, tokenizer):
    """A repository-like folder: params, data sources, a pretrained model and a LoRA adapter with cards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # mlflow exports it in-process
    (tmp_path / "data").mkdir()
    (tmp_path / "data/SOURCES.md").write_text((REPO / "data/SOURCES.md").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["hub"]["namespace"] = "alice"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain = tmp_path / "artifacts/pretrain"
    tiny_model.save_pretrained(pretrain)
    tokenizer.save_pretrained(pretrain)
    (pretrain / "training_args.bin").write_bytes(b"a pickle")
    base = AutoModelForCausalLM.from_pretrained("artifacts/pretrain")
    lora = get_peft_model(base, adapters.lora_config({"r": 2, "target_modules": ["c_attn"]}, TaskType.CAUSAL_LM, base))
    lora.save_pretrained(tmp_path / "artifacts/lora/adapter")
    lora.merge_and_unload().save_pretrained(tmp_path / "artifacts/lora/merged")
    for folder in ("adapter", "merged"):
        tokenizer.save_pretrained(tmp_path / "artifacts/lora" / folder)
    made = dict(recipe="tiny", settings={"training.learning_rate": 0.003}, data=["data/text/tinyshakespeare.txt"], hub_data=[])
    for folder, artifact, base_model in (("pretrain", "pretrain", None), ("lora/adapter", "lora", "artifacts/pretrain")):
        facts = cards.CardFacts(artifact=artifact, metrics={"val_loss": 4.5}, base_model=base_model, **made)
        cards.write(tmp_path / "artifacts" / folder, cards.model_card(facts, f"artifacts/{folder}", "apache-2.0", "en"))
    return tmp_path


@pytest.fixture
def hub(monkeypatch):
    """Record what would be sent; the token is a recognisable fake."""
    sent = {"repos": [], "commits": []}

    def create_repo(self, repo_id, **kwargs):
        sent["repos"].append((repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        sent["commits"].append((repo_id, list(operations), kwargs))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message="", commit_description="", oid="abc")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **k: SimpleNamespace(private=sent["repos"][-1][1]["private"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(requests, "head", lambda *a, **k: None)  # the reachability probe
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return sent


def materialize(operations, folder: Path) -> Path:
    """The repository as the Hub would hold it after the commit."""
    for op in operations:
        target = folder / op.path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        content = op.path_or_fileobj
        target.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
    return folder


def test_push_sends_one_commit_that_reloads_with_stock_loaders(workdir, hub, capsys):
    assert cli.main(["push", "pretrain", "lora"]) == 0
    assert [repo for repo, _ in hub["repos"]] == ["alice/llmpipe-pretrain", "alice/llmpipe-lora"]
    assert all(kwargs["private"] for _, kwargs in hub["repos"])  # private unless --public
    (pretrain_repo, pretrain_ops, _), (lora_repo, lora_ops, _) = hub["commits"]
    pushed = {op.path_in_repo for op in pretrain_ops}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= pushed
    assert "training_args.bin" not in pushed  # pickles never leave

    model_repo = materialize(pretrain_ops, workdir / "hub/pretrain")
    model = AutoModelForCausalLM.from_pretrained(model_repo)
    assert ModelCard.load(model_repo / "README.md").data.model_name == "llmpipe-pretrain"
    adapter_repo = materialize(lora_ops, workdir / "hub/lora")
    config = json.loads((adapter_repo / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "alice/llmpipe-pretrain"  # the base's Hub id, not a local path
    card = ModelCard.load(adapter_repo / "README.md").data
    assert card.base_model == "alice/llmpipe-pretrain"
    adapted = PeftModel.from_pretrained(model, adapter_repo)
    inputs = AutoTokenizer.from_pretrained(adapter_repo)("I had always", return_tensors="pt")
    assert adapted.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3
    assert "alice/llmpipe-lora" in capsys.readouterr().out


def test_the_token_appears_nowhere_the_push_wrote_or_printed(workdir, hub, capsys):
    assert cli.main(["push", "pretrain", "--repo-id", "alice/x", "--public"]) == 0
    assert hub["repos"][0][1]["private"] is False
    output = capsys.readouterr()
    assert FAKE_TOKEN not in output.out + output.err
    (_, operations, kwargs) = hub["commits"][0]
    assert FAKE_TOKEN not in json.dumps(kwargs)
    for op in operations:
        content = op.path_or_fileobj
        assert FAKE_TOKEN.encode() not in (content if isinstance(content, bytes) else Path(content).read_bytes())
    written = [path for path in workdir.rglob("*") if path.is_file()]
    assert any(path.name == "mlflow.db" for path in written)  # the push was tracked
    for path in written:
        assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_dry_run_sends_nothing_and_needs_no_network(workdir, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run touched the Hub")

    monkeypatch.setattr(HfApi, "create_commit", refuse)
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    assert cli.main(["push", "lora", "--dry-run", "--repo-id", "alice/a", "--base-model", "alice/base"]) == 0
    out = capsys.readouterr().out
    assert "one commit of 5 files" in out and "add adapter_model.safetensors" in out
    assert "base_model: alice/base" in out and not (workdir / "mlflow.db").exists()


def test_an_adapter_on_a_local_base_needs_the_bases_hub_id(workdir, capsys):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["hub"]["namespace"] = ""
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["push", "lora", "--repo-id", "alice/a", "--dry-run"]) == 2
    assert "the adapter's base is the local folder artifacts/pretrain: push it first" in capsys.readouterr().err


def test_offline_push_fails_at_once_with_the_fix(workdir):
    result = run_cli("push", "pretrain", cwd=workdir, env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "HF_HUB_OFFLINE is set: pushing needs the network" in result.stderr


def test_push_from_params_does_nothing_while_off(workdir, hub, capsys):
    assert cli.main(["push", "--from-params"]) == 0
    assert "push: off" in capsys.readouterr().out and not hub["commits"]


def test_push_from_params_sends_the_stages_params_names_when_on(workdir, hub, capsys):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["hub"] |= {"push": True, "stages": ["pretrain"]}  # what `dvc repro` runs as its push stage
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["push", "--from-params"]) == 0
    assert [repo_id for repo_id, _, _ in hub["commits"]] == ["alice/llmpipe-pretrain"]
    assert "alice/llmpipe-pretrain" in capsys.readouterr().out


def test_a_classifiers_nested_adapter_names_its_base_by_hub_id_and_peft_card_stays_home(workdir):
    classify = workdir / "artifacts/classify"
    (classify / "adapter").mkdir(parents=True)
    (classify / "model.safetensors").write_bytes(b"weights")
    (classify / "adapter/adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "artifacts/pretrain"}))
    (classify / "adapter/README.md").write_text("---\nbase_model: artifacts/pretrain\n---\n")
    card = ModelCard("---\nlicense: mit\n---\nours\n")
    ops = {op.path_in_repo: op.path_or_fileobj for op in push.operations(classify, card, "alice/llmpipe-pretrain")}
    assert set(ops) == {"model.safetensors", "adapter/adapter_config.json", "README.md"}
    assert json.loads(ops["adapter/adapter_config.json"])["base_model_name_or_path"] == "alice/llmpipe-pretrain"


def test_one_base_model_for_several_stages_is_refused(workdir, capsys):
    assert cli.main(["push", "sft", "lora", "--base-model", "alice/base", "--dry-run"]) == 2
    assert "--repo-id and --base-model name one repository" in capsys.readouterr().err


def test_a_folder_without_weights_or_no_folder_is_refused_before_anything_is_sent(workdir, hub, capsys):
    (workdir / "artifacts/pretrain/model.safetensors").unlink()
    assert cli.main(["push", "lora", "pretrain"]) == 2
    assert "artifacts/pretrain: no weights (*.safetensors) in this folder" in capsys.readouterr().err
    assert cli.main(["push", "pretrain", "--dry-run", "--artifacts", "elsewhere"]) == 2
    assert "elsewhere/pretrain: no such folder" in capsys.readouterr().err
    assert hub["commits"] == []  # not even the lora adapter, which was whole


def test_an_unknown_stage_is_named(workdir, capsys):
    assert cli.main(["push", "evaluate", "--dry-run"]) == 2
    assert "cannot push evaluate: choose from tokenizer, pretrain" in capsys.readouterr().err


def test_visibility_follows_the_flag_then_params(workdir, hub):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    for flag, params_private, sent_private in (
        ([], True, True), ([], False, False), (["--private"], False, True), (["--public"], True, False),
    ):
        params["hub"]["private"] = params_private
        (workdir / "params.yaml").write_text(yaml.safe_dump(params))
        assert cli.main(["push", "pretrain", *flag]) == 0
        assert hub["repos"].pop() == ("alice/llmpipe-pretrain", {"private": sent_private, "exist_ok": True}), flag


def hub_answer(status: int, error: str):
    """What create_repo raises when the Hub answers `status` with `error` (huggingface_hub's own parsing)."""
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    hf_raise_for_status(httpx2.Response(status, json={"error": error}, request=request))


@pytest.mark.parametrize("raised, culprits", [
    (lambda: hub_answer(400, 'Invalid metadata in README.md.\n- "license" must be one of [...]'),
     ["HTTP 400: Invalid metadata in README.md. - \"license\" must be one of", "hub.license"]),
    (lambda: hub_answer(403, "You don't have the rights to create a model under the namespace \"alice\""),
     ["HTTP 403: You don't have the rights", "use a write token"]),
    (lambda: (_ for _ in ()).throw(httpx2.ConnectError("[Errno -2] Name or service not known")),
     ["the push failed on the network (ConnectError: [Errno -2] Name or service not known)"]),
], ids=["bad metadata", "no rights", "network"])
def test_a_refused_push_says_what_the_hub_said_and_what_to_do(workdir, hub, monkeypatch, capsys, raised, culprits):
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: raised())
    assert_refused(cli.main(["push", "pretrain"]), capsys.readouterr().err, "alice/llmpipe-pretrain", *culprits)


def test_a_bad_repo_id_is_refused_before_anything_runs(workdir, capsys):
    assert_refused(cli.main(["push", "pretrain", "--repo-id", "a/b/c", "--dry-run"]), capsys.readouterr().err,
                   "'a/b/c' is not a Hub repository id", "fix --repo-id (USER/NAME)")


def test_the_usage_snippet_loads_the_pushed_revision(workdir, capsys):
    assert cli.main(["push", "pretrain", "--revision", "dev", "--dry-run"]) == 0
    assert "model='alice/llmpipe-pretrain', revision='dev')" in capsys.readouterr().out


def test_a_reader_that_stops_early_gets_no_traceback(workdir):
    """`llmpipe push ... --dry-run | head`: the pipe is closed before the command writes anything."""
    argv = [sys.executable, "-m", "llmpipe", "push", "pretrain", "--dry-run"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(REPO)}
    process = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_no_network_or_no_token_is_named_before_anything_is_sent(monkeypatch):
    def unreachable(*args, **kwargs):
        raise requests.ConnectionError("no route to host")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(requests, "head", unreachable)
    with pytest.raises(UserError, match=r"cannot reach https://huggingface\.co \(ConnectionError\); check the network"):
        push.require_hub()
    monkeypatch.setattr(requests, "head", lambda *args, **kwargs: None)
    monkeypatch.setattr(push, "get_token", lambda: None)  # neither HF_TOKEN nor a saved login
    with pytest.raises(UserError, match="no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        push.require_hub()


def dpo_folder(workdir: Path, folder: str, artifact: str, model) -> None:
    """A folder as the dpo stage writes it: the model (or adapter) with its tokenizer and card."""
    model.save_pretrained(workdir / "artifacts" / folder)
    AutoTokenizer.from_pretrained(workdir / "artifacts/pretrain").save_pretrained(workdir / "artifacts" / folder)
    facts = cards.CardFacts(artifact=artifact, recipe="tiny", settings={}, metrics={"val_reward_accuracy": 0.61},
                            data=["data/instruction-data-with-preference.json"], hub_data=[], base_model="artifacts/pretrain")
    cards.write(workdir / "artifacts" / folder, cards.model_card(facts, f"artifacts/{folder}", "apache-2.0", "en"))


def test_push_dpo_sends_its_model_or_its_adapter_and_merged_model(workdir, hub):
    base = AutoModelForCausalLM.from_pretrained("artifacts/pretrain")
    dpo_folder(workdir, "dpo", "dpo", base)
    assert cli.main(["push", "dpo"]) == 0
    (repo_id, ops, _), = hub["commits"]
    assert repo_id == "alice/llmpipe-dpo" and "model.safetensors" in {op.path_in_repo for op in ops}
    assert "Reward accuracy" in next(op.path_or_fileobj for op in ops if op.path_in_repo == "README.md").decode()

    shutil.rmtree(workdir / "artifacts/dpo")  # a recipe with `trainable: lora`: the adapter beside the merged model
    lora = get_peft_model(base, adapters.lora_config({"r": 2, "target_modules": ["c_attn"]}, TaskType.CAUSAL_LM, base))
    dpo_folder(workdir, "dpo/adapter", "dpo-adapter", lora)
    dpo_folder(workdir, "dpo/merged", "dpo-merged", lora.merge_and_unload())
    assert cli.main(["push", "dpo", "dpo-merged"]) == 0
    (_, adapter_ops, _), (merged_repo, merged_ops, _) = hub["commits"][1:]
    adapter_repo = materialize(adapter_ops, workdir / "hub/dpo")
    assert json.loads((adapter_repo / "adapter_config.json").read_text())["base_model_name_or_path"] == "alice/llmpipe-pretrain"
    assert merged_repo == "alice/llmpipe-dpo-merged" and "model.safetensors" in {op.path_in_repo for op in merged_ops}
