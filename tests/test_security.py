"""Security: weights load from safetensors only, remote code never runs, pickles are refused unread, no
secret reaches a file the pipeline writes, servers listen on 127.0.0.1."""

import json
import re
import shutil
import subprocess

import pytest
import torch
import yaml

from llmpipe import artifacts, cli
from llmpipe.errors import UserError
from llmpipe.runtime import redact
from tests.conftest import FAKE_SECRET, REPO, assert_refused, outputs_snapshot


class Payload:
    """A pickle that would create `marker` if anything unpickled it fully."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_folder_with_only_pickled_weights_is_refused(tiny_model, tokenizer, tmp_path):
    tiny_model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match=rf"{tmp_path}: cannot load .*safetensors"):
        artifacts.load_causal_lm(tmp_path)


def test_remote_code_in_a_model_folder_never_runs(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    marker = tmp_path / "ran"
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert type(artifacts.load_causal_lm(tmp_path)).__name__ == "GPT2LMHeadModel"  # the stock class, not the folder's
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "evil-gpt"}))
    with pytest.raises(UserError, match=str(tmp_path)):  # a type only the folder's code knows: refused
        artifacts.load_causal_lm(tmp_path)
    assert not marker.exists()
    sources = "\n".join(path.read_text() for path in (REPO / "llmpipe").rglob("*.py"))
    assert not re.search(r"trust_remote_code\s*=\s*True", sources)


def test_a_checkpoint_holding_a_pickle_is_refused_unread(inside, capsys, tmp_path):
    checkpoint = sorted((inside / "checkpoints/pretrain").glob("checkpoint-*"))[-1]
    run_file = inside / "checkpoints/pretrain/llmpipe-run.json"
    finished = run_file.read_text()
    backup = tmp_path / "optimizer.pt"
    shutil.copy(checkpoint / "optimizer.pt", backup)
    marker = tmp_path / "unpickled"
    torch.save(Payload(marker), checkpoint / "optimizer.pt")  # torch.save pickles whatever it is given
    run_file.write_text(json.dumps({**json.loads(finished), "finished": False}))
    outputs = outputs_snapshot(inside)
    try:
        code = cli.main(["pretrain"])
    finally:
        run_file.write_text(finished)
        shutil.copy(backup, checkpoint / "optimizer.pt")
    assert_refused(code, capsys.readouterr().err, f"{checkpoint.relative_to(inside)}: holds a pickle", "--restart")
    assert not marker.exists() and outputs_snapshot(inside) == outputs


def test_no_secret_reaches_any_file_the_pipeline_wrote_or_its_mlflow_store(repo):
    """The pipeline ran with HF_TOKEN and OPENAI_API_KEY set to FAKE_SECRET (tests/conftest.py `sh`)."""
    scanned = 0
    for path in repo.rglob("*"):
        assert FAKE_SECRET not in str(path)
        if path.is_file() and ".git" not in path.relative_to(repo).parts:
            assert FAKE_SECRET.encode() not in path.read_bytes(), path
            scanned += 1
    assert (repo / "mlflow.db").is_file() and any((repo / "mlruns").rglob("model.safetensors")) and scanned > 100


def test_credentials_in_urls_are_redacted():
    assert redact.url("http://user:pw@host:8080/v1?api-key=k1&model=x") == "http://host:8080/v1?api-key=***&model=x"
    assert redact.url("https://host/v1?token=t&sig=s") == "https://host/v1?token=***&sig=***"
    assert redact.url("hf:artifacts/sft") == "hf:artifacts/sft" and redact.url("self") == "self"
    assert "pw" not in redact.url("http://user:pw@host:port/")  # malformed, still nothing shown
    assert redact.value({"urls": ["http://u:pw@h/v1"]}) == {"urls": ["http://h/v1"]}
    assert redact.setting("training.hub_token", "hf_x") == "***" and redact.setting("judge.api_key", "k") == "***"
    assert redact.setting("special_tokens.pad_token", "<pad>") == "<pad>" and redact.setting("max_new_tokens", 5) == 5


def test_a_token_in_a_recipe_is_refused_before_mlflow_sees_it(inside, capsys, tmp_path):
    params = yaml.safe_load((inside / "params.yaml").read_text())
    params["mlflow"] |= {"enabled": True, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = cli.main(["pretrain", "--params", str(tmp_path / "params.yaml"), "--set", f"training.hub_token={FAKE_SECRET}"])
    assert_refused(code, capsys.readouterr().err, "`training.hub_token` is set by llmpipe")
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run started, not merely redacted in one
    assert not any(FAKE_SECRET.encode() in path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and path.name != "params.yaml")


def test_the_mlflow_ui_listens_on_localhost_only():
    recipe = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True).stdout
    assert "--host 127.0.0.1" in recipe
    sources = [*(REPO / "llmpipe").rglob("*.py"), REPO / "Makefile", *(REPO / "tests").rglob("*.py")]
    assert not any("0.0.0.0" in path.read_text() for path in sources if path.name != "test_security.py")
