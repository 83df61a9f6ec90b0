"""The adaptation methods (lecture "Intro to LLMs", part 5): each trains as the classify stage on the test recipe,
trains only its share of the parameters, and saves a classifier that users' stock loaders read back with the
stage's own test accuracy. The gathering stage tables them."""

import json
import re

import pytest
import yaml

from llmpipe import cli
from tests.conftest import REPO, assert_refused, reloaded_test_accuracy, run_classify

METHODS = yaml.safe_load((REPO / "recipes/test/adaptation.yaml").read_text())["methods"]
SAVED_AS = {"lora": "merged", "ia3": "merged", "prompt_tuning": "adapter", "p_tuning": "adapter"}  # merged: and the adapter beside


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_its_share_and_reloads_with_the_reported_test_accuracy(inside, tmp_path, method, capsys):
    code, reported = run_classify(tmp_path, "--set-from", f"recipes/test/adaptation.yaml:methods.{method}")
    assert code == 0
    assert reported["trainable"] == METHODS[method]["trainable"]
    assert 0 < reported["trainable_parameters"] <= reported["total_parameters"]
    assert (reported["trainable_fraction"] == 1.0) == (method == "all")
    out = tmp_path / "out"
    saved = "adapter" if (out / "adapter_config.json").exists() else "merged" if (out / "adapter").exists() else "full model"
    assert saved == SAVED_AS.get(METHODS[method]["trainable"], "full model")  # a full model needs no PEFT to load
    accuracy, messages = reloaded_test_accuracy(inside, out)
    assert accuracy == pytest.approx(reported["test_accuracy"], abs=1 / messages)
    capsys.readouterr()
    longer_than_the_context = "Reply WIN now. " * 400  # cut to fit, with a prompt adapter's virtual tokens in front
    assert cli.main(["classify-text", "--model", str(out), "Free prize! Reply WIN now.", longer_than_the_context]) == 0
    assert [line.split("\t")[0] in ("ham", "spam") for line in capsys.readouterr().out.splitlines()] == [True, True]  # not LABEL_0
    card = (out / "README.md").read_text()
    exec(card.split("```python\n")[1].split("```")[0], {})  # the card's usage snippet runs as it stands
    assert re.search(r"'label': '(ham|spam)'", capsys.readouterr().out)


def test_prefix_tuning_is_refused_with_the_reason_while_peft_passes_past_key_values(inside, tmp_path, capsys):
    code, _ = run_classify(tmp_path, "--set", "trainable=prefix_tuning")
    assert_refused(code, capsys.readouterr().err, "prefix_tuning", "past_key_values", "use prompt_tuning")


def test_a_method_name_missing_from_the_changes_file_is_named(inside, tmp_path, capsys):
    code, _ = run_classify(tmp_path, "--set-from", "recipes/test/adaptation.yaml:methods.adapters")
    assert_refused(code, capsys.readouterr().err, "recipes/test/adaptation.yaml", "methods.adapters", "probe")


def test_a_bad_key_in_a_methods_changes_names_both_files(inside, tmp_path, capsys):
    changes = tmp_path / "adaptation.yaml"
    changes.write_text("methods:\n  probe: {trainable: probe, training: {learning_rat: 0.1}}\n")
    code, _ = run_classify(tmp_path, "--set-from", f"{changes}:methods.probe")
    assert_refused(code, capsys.readouterr().err, "classify.yaml", str(changes), "training.learning_rat", "learning_rate")


def gather(tmp_path, names: list[str], runs) -> int:
    params = tmp_path / "params.yaml"
    settings = yaml.safe_load((REPO / "params.yaml").read_text())
    settings["mlflow"]["enabled"] = False
    settings["adaptation"] = names
    params.write_text(yaml.safe_dump(settings))
    return cli.main(["adaptation", "--params", str(params), "--recipe", str(REPO / "recipes/test/adaptation.yaml"),
                     "--runs", str(runs), "--classify-metrics", str(runs / "classify.json"),
                     "--metrics", str(tmp_path / "adaptation.json"), "--figure", str(tmp_path / "a.png")])


def write_run(path, trainable: str, accuracy: float, share: float) -> None:
    path.write_text(json.dumps({
        "trainable": trainable, "test_accuracy": accuracy, "validation_accuracy": accuracy, "trainable_parameters": int(share * 1e6),
        "trainable_fraction": share, "train_step_seconds": 1.0, "seconds": 2.0, "baseline_test_accuracy": 0.97,
    }))


def test_the_table_holds_each_methods_figures_the_classify_stages_run_and_the_baseline(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs / "probe.json", "probe", 0.8, 0.0002)
    write_run(runs / "classify.json", "all", 0.95, 1.0)
    assert gather(tmp_path, ["probe"], runs) == 0
    table = json.loads((tmp_path / "adaptation.json").read_text())
    assert table["baseline_test_accuracy"] == 0.97
    assert table["methods"]["all"]["test_accuracy"] == 0.95 and table["methods"]["probe"]["trainable_fraction"] == 0.0002
    assert (tmp_path / "a.png").stat().st_size > 0


def test_an_adapt_run_of_the_classify_stages_method_stands_over_the_stages_own(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs / "last_block.json", "last_block", 0.91, 0.2)  # sized on its own: 3 epochs, say
    write_run(runs / "classify.json", "last_block", 0.88, 0.2)
    assert gather(tmp_path, ["last_block"], runs) == 0
    methods = json.loads((tmp_path / "adaptation.json").read_text())["methods"]
    assert list(methods) == ["last_block"] and methods["last_block"]["test_accuracy"] == 0.91


def test_a_method_that_has_not_run_is_named_with_the_command_that_runs_it(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    write_run(tmp_path / "runs/classify.json", "all", 0.95, 1.0)
    assert_refused(gather(tmp_path, ["probe"], tmp_path / "runs"), capsys.readouterr().err, "probe.json", "dvc repro adapt@probe")


def test_a_missing_classify_stage_run_is_named_with_the_command_that_runs_it(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    write_run(tmp_path / "runs/probe.json", "probe", 0.8, 0.0002)
    assert_refused(gather(tmp_path, ["probe"], tmp_path / "runs"), capsys.readouterr().err, "classify.json", "dvc repro classify")


@pytest.mark.parametrize("damage, culprit", [("truncate", "probe.json: not valid JSON"), ("drop seconds", "probe.json: no `seconds`")])
def test_metrics_of_an_older_or_broken_run_are_named_with_the_command_that_remakes_them(tmp_path, capsys, damage, culprit):
    (tmp_path / "runs").mkdir()
    write_run(tmp_path / "runs/classify.json", "all", 0.95, 1.0)
    write_run(probe := tmp_path / "runs/probe.json", "probe", 0.8, 0.0002)
    run = json.loads(probe.read_text())
    probe.write_text(probe.read_text()[:20] if damage == "truncate" else json.dumps({k: v for k, v in run.items() if k != "seconds"}))
    assert_refused(gather(tmp_path, ["probe"], tmp_path / "runs"), capsys.readouterr().err, culprit, "dvc repro adapt@probe")


def test_no_methods_make_an_empty_table_that_says_so(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert gather(tmp_path, [], tmp_path / "runs") == 0
    assert "no adaptation methods compared" in capsys.readouterr().out
    assert json.loads((tmp_path / "adaptation.json").read_text())["methods"] == {}


def test_a_method_the_recipe_does_not_define_is_named(tmp_path, capsys):
    assert_refused(gather(tmp_path, ["adapters"], tmp_path), capsys.readouterr().err, "params.yaml", "adapters")
