"""The dpo stage on the `test` recipe, from a small GPT-2 standing in for the sft model: the held-out pairs'
reward accuracy rises, what it saves reloads with stock loaders, and bad preference data is refused by name."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import AutoPeftModelForCausalLM
from transformers import pipeline

from llmpipe import adapters, cli, config, params
from llmpipe.data import instructions, preferences
from llmpipe.metrics import preference_scores
from tests.conftest import REPO, assert_refused

PROBE = "Below is an instruction that describes a task.\n\n### Instruction:\nName a colour.\n\n### Response:\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model, tokenizer) -> Path:
    """Params (the `test` recipe, MLflow off), recipes, data, and a small model with its tokenizer as artifacts/sft."""
    root = tmp_path_factory.mktemp("dpo")
    shutil.copytree(REPO / "recipes", root / "recipes")
    shutil.copytree(REPO / "data", root / "data", ignore=shutil.ignore_patterns("text", "sms_spam"))
    settings = yaml.safe_load((REPO / "params.yaml").read_text())
    settings["recipe"] = "test"
    settings["mlflow"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    tiny_model.save_pretrained(root / "artifacts/sft")
    tokenizer.save_pretrained(root / "artifacts/sft")
    return root


def run_dpo(root: Path, name: str, *options: str) -> tuple[int, dict]:
    here = Path.cwd()
    os.chdir(root)
    try:
        code = cli.main(["dpo", "--output", f"out/{name}", "--metrics", f"out/{name}.json", "--checkpoints", f"checkpoints/{name}", *options])
    finally:
        os.chdir(here)
    return code, json.loads((root / f"out/{name}.json").read_text()) if code == 0 else {}


@pytest.fixture(scope="module")
def full(project) -> dict:
    code, metrics = run_dpo(project, "full")
    assert code == 0
    return metrics


@pytest.fixture(scope="module")
def adapter(project) -> torch.Tensor:
    """A LoRA run; the trained model's logits on PROBE, taken as the stage saves it."""
    trained = {}
    save = adapters.save_adapter_and_merged

    def record_then_save(trainer, *args):
        encoded = trainer.processing_class(PROBE, return_tensors="pt")
        with torch.no_grad():
            trained["logits"] = trainer.model.eval()(**encoded).logits
        save(trainer, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapters, "save_adapter_and_merged", record_then_save)
        code, _ = run_dpo(project, "lora", "--set", "trainable=lora", "--set", "lora.r=4")
    assert code == 0
    return trained["logits"]


def test_held_out_reward_accuracy_rises_from_chance(full):
    for split in ("val", "test"):
        assert full[f"initial_{split}_reward_accuracy"] == 0.5  # the policy is the reference: every pair a tie
        assert full[f"{split}_reward_accuracy"] > 0.6, full
        assert full[f"{split}_margin"] > 0
        assert full[f"{split}_dpo_loss"] < 0.6931  # ln 2, the loss of a model that prefers neither answer
    # the same pairs by the model's own likelihood: the shorter answer wins (the untrained model's length bias)
    assert full["initial_val_likelihood_accuracy_impolite_rejected"] > 0.8 > 0.2 > full["initial_val_likelihood_accuracy_polite_preferred"]


def test_a_tie_counts_half_and_scores_split_by_pair_type():
    log_probs = {"chosen": [-1.0, -5.0, -2.0], "rejected": [-3.0, -1.0, -2.0], "ref_chosen": [-2.0, -4.0, -2.0], "ref_rejected": [-2.0, -2.0, -2.0]}
    found = preference_scores.scores(log_probs, 0.5, ["polite_preferred", "impolite_rejected", None], "val_")
    assert found["val_reward_accuracy"] == 0.5  # one won, one lost, one tie (chosen equals rejected)
    assert found["val_margin"] == pytest.approx(0) and found["val_margin_polite_preferred"] == pytest.approx(1.0)
    assert found["val_reward_accuracy_polite_preferred"] == 1.0 and found["val_reward_accuracy_impolite_rejected"] == 0.0
    assert found["val_likelihood_accuracy"] == 0.5 and found["val_dpo_loss_polite_preferred"] == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-4)
    assert preference_scores.scores(preference_scores.before_training(log_probs), 0.5, [None] * 3, "")["reward_accuracy"] == 0.5


def test_the_folder_reloads_with_pipeline_and_names_its_data_in_the_card(project, full):
    folder = project / "out/full"
    generator = pipeline("text-generation", model=str(folder))
    assert generator(PROBE, max_new_tokens=3, do_sample=False)[0]["generated_text"].startswith(PROBE)
    card = (folder / "README.md").read_text()
    assert "instruction-data-with-preference.json" in card and "Reward accuracy (held-out pairs; ties count half)" in card


def test_adapter_and_merged_folders_reload_with_stock_loaders_and_give_the_trained_logits(project, adapter, monkeypatch):
    monkeypatch.chdir(project)  # the adapter names its base as the stage was given it: artifacts/sft
    encoded = pipeline("text-generation", model=str(project / "out/lora/merged")).tokenizer(PROBE, return_tensors="pt")
    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(project / "out/lora/adapter")).eval()
    merged = pipeline("text-generation", model=str(project / "out/lora/merged")).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**encoded).logits, adapter, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(**encoded).logits, adapter, atol=1e-4, rtol=1e-4)
    base = pipeline("text-generation", model=str(project / "artifacts/sft")).model.eval()
    with torch.no_grad():
        assert not torch.allclose(base(**encoded).logits, adapter, atol=1e-4)  # the adapter trained


def test_no_dpo_train_pair_is_in_evaluates_test_split():
    pipeline_params = params.load(REPO / "params.yaml")
    for recipe in ("tiny", "smol", "gpt2-book", "test"):
        settings_file = REPO / "recipes" / recipe / "instructions.yaml"
        task = config.load(instructions.InstructionTask, settings_file)
        trained = preferences.splits(pipeline_params.preference_data, pipeline_params.instruction_data, task, settings_file)["train"]
        tested = task.splits(pipeline_params.instruction_data, settings_file)["test"]  # what evaluate answers
        as_asked = {(entry["instruction"], entry["input"], entry["output"]) for entry in tested}
        assert not [entry for entry in trained if (entry["instruction"], entry["input"], entry["output"]) in as_asked]
        assert len(trained) == len(task.splits(pipeline_params.instruction_data, settings_file)["train"])


def bad_preferences(root: Path, tmp_path: Path, change) -> str:
    """Params naming a copy of the preference data changed by `change(entries)`."""
    entries = json.loads((REPO / "data/instruction-data-with-preference.json").read_text())
    change(entries)
    (tmp_path / "prefs.json").write_text(json.dumps(entries))
    settings = yaml.safe_load((root / "params.yaml").read_text()) | {"preference_data": str(tmp_path / "prefs.json")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    return str(tmp_path / "params.yaml")


def same_answers(entries: list[dict]) -> None:
    for entry in entries:
        entry["rejected"] = entry["chosen"]


@pytest.mark.parametrize(
    "change, culprits",
    [
        (lambda entries: entries[7].pop("rejected"), ["prefs.json: entry 7", "missing `rejected`"]),
        (lambda entries: entries[3].update(chosen=["a", "list"]), ["prefs.json: entry 3", "`chosen` must be text"]),
        (same_answers, ["prefs.json", "every pair has `chosen` equal to `rejected`", "entry 0"]),
        (lambda entries: entries.insert(0, entries.pop(950)), ["prefs.json: entry 0", "not what the instruction data"]),
        (lambda entries: entries.pop(), ["prefs.json", "1099 entries", "has 1100"]),
    ],
    ids=["missing-rejected", "not-text", "all-equal", "other-order", "other-count"],
)
def test_bad_preference_data_is_refused_by_name(project, tmp_path, capsys, change, culprits):
    code, _ = run_dpo(project, "bad", "--params", bad_preferences(project, tmp_path, change))
    assert_refused(code, capsys.readouterr().err, *culprits)


@pytest.mark.parametrize(
    "setting, culprits",
    [
        ("training.max_prompt_length=128", ["`training.max_prompt_length` was removed from DPOConfig", "max_length"]),
        ("training.rpo_alpha=0.5", ["`training.rpo_alpha` was removed", "loss_weights"]),
        ("training.max_length=4096", ["`training.max_length` is 4096, beyond the model's context of 256"]),
        ("lora.r=4", ["a `lora` section with `trainable: all`"]),
    ],
)
def test_recipe_keys_dpo_cannot_take_are_refused_by_name(project, capsys, setting, culprits):
    code, _ = run_dpo(project, "bad", "--set", setting)
    assert_refused(code, capsys.readouterr().err, *culprits)


def test_a_recipe_must_say_whether_it_wants_bf16(project, tmp_path, capsys):
    recipe = yaml.safe_load((project / "recipes/test/dpo.yaml").read_text())
    del recipe["training"]["bf16"]
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(recipe))
    code, _ = run_dpo(project, "bad", "--recipe", str(tmp_path / "dpo.yaml"))
    assert_refused(code, capsys.readouterr().err, "must set `bf16`", "TRL's DPOConfig turns both on")


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(project, capsys):
    keep_both = ("--set", "training.save_total_limit=2")  # checkpoint-4 and checkpoint-8
    code, uninterrupted = run_dpo(project, "resumed", *keep_both)
    assert code == 0
    run_file = project / "checkpoints/resumed/llmpipe-run.json"  # as a run killed after its step-4 checkpoint left it
    run_file.write_text(json.dumps(json.loads(run_file.read_text()) | {"finished": False}))
    shutil.rmtree(project / "checkpoints/resumed/checkpoint-8")
    capsys.readouterr()
    code, resumed = run_dpo(project, "resumed", *keep_both)
    assert code == 0 and "resuming from checkpoints/resumed/checkpoint-4" in capsys.readouterr().out
    for key in ("val_reward_accuracy", "val_margin", "test_margin", "test_dpo_loss"):
        assert resumed[key] == uninterrupted[key], key
