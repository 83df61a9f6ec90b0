import argparse
import dataclasses
import importlib
import re
from dataclasses import dataclass, field

import pytest
import torch
import yaml
from transformers import TrainingArguments

from llmpipe import cli, config
from llmpipe.adapters import PEFT_METHODS
from llmpipe.data.instructions import InstructionTask
from llmpipe.errors import UserError
from llmpipe.stages.adaptation import AdaptationRecipe
from llmpipe.stages.classify import ClassifyRecipe
from llmpipe.stages.corpus import CorpusRecipe
from llmpipe.stages.dpo import DpoRecipe
from llmpipe.stages.evaluate import EvaluateRecipe
from llmpipe.stages.judge_model import JudgeModelRecipe
from llmpipe.stages.lora import LoraRecipe
from llmpipe.stages.pretrain import PretrainRecipe
from llmpipe.stages.tokenizer import TokenizerRecipe
from llmpipe.stages.tuning import SftRecipe
from tests.conftest import REPO, assert_refused


def write(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_unknown_library_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, {"training": {"learnig_rate": 1e-3}})
    with pytest.raises(UserError, match=r"recipe\.yaml: unknown key `training\.learnig_rate`; did you mean `training\.learning_rate`"):
        config.load(PretrainRecipe, path)


def test_unknown_top_level_key_is_named(tmp_path):
    with pytest.raises(UserError, match="unknown key `sample_promt`; did you mean `sample_prompt`"):
        config.load(PretrainRecipe, write(tmp_path, {"sample_promt": "x"}))


def test_wrong_type_names_key_expected_and_got(tmp_path):
    with pytest.raises(UserError, match=r"`model\.n_layer` must be int, got str 'four'"):
        config.load(PretrainRecipe, write(tmp_path, {"model": {"n_layer": "four"}}))
    with pytest.raises(UserError, match=r"`training\.learning_rate` must be float, got str 'fast'"):
        config.load(PretrainRecipe, write(tmp_path, {"training": {"learning_rate": "fast"}}))


def test_yaml_exponent_without_dot_is_read_as_the_number(tmp_path):
    # PyYAML reads `3e-4` as a string; a float argument takes it as the number it means.
    path = tmp_path / "r.yaml"
    path.write_text("training:\n  learning_rate: 3e-4\n")
    assert config.load(PretrainRecipe, path).training["learning_rate"] == pytest.approx(3e-4)


def test_an_unquoted_no_is_the_word_where_the_word_is_allowed(tmp_path):
    # YAML 1.1 reads `no` as False; `dvc exp run -S` writes recipes back with `"no"` unquoted.
    path = tmp_path / "r.yaml"
    path.write_text("training:\n  eval_strategy: no\n  save_strategy: no\n")
    assert config.load(SftRecipe, path).training == {"eval_strategy": "no", "save_strategy": "no"}
    path.write_text("prompt_format: no\n")
    with pytest.raises(UserError, match="`prompt_format` must be one of 'alpaca', 'chat', got bool False"):
        config.load(InstructionTask, path)


def test_set_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, {"training": {"learning_rate": 0.1, "seed": 1}, "sample_prompt": "a"})
    recipe = config.load(PretrainRecipe, path, ["training.learning_rate=3e-4", "sample_prompt=b", "model.n_layer=3"])
    assert recipe.training == {"learning_rate": pytest.approx(3e-4), "seed": 1}
    assert recipe.sample_prompt == "b" and recipe.model == {"n_layer": 3}


def test_set_override_is_checked_like_the_file(tmp_path):
    with pytest.raises(UserError, match="unknown key `training.lr`"):
        config.load(PretrainRecipe, write(tmp_path, {}), ["training.lr=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        config.load(PretrainRecipe, write(tmp_path, {}), ["training.learning_rate"])


def test_values_of_a_typed_mapping_are_checked(tmp_path):
    with pytest.raises(UserError, match=r"`split\.test` must be float, got str 'a tenth'"):
        config.load(InstructionTask, write(tmp_path, {"split": {"train": 0.85, "test": "a tenth", "validation": 0.05}}))
    assert config.load(InstructionTask, write(tmp_path, {"split": {"train": 0.8, "test": "1e-1", "validation": 0.1}})).split["test"] == 0.1


@pytest.mark.parametrize("stage, key", [("sft", "split"), ("lora", "prompt_format"), ("evaluate", "split_from")])
def test_a_setting_that_moved_to_instructions_yaml_is_named_with_its_new_place(tmp_path, stage, key):
    with pytest.raises(UserError, match=f"`{key}` (is set in|is gone: evaluate tests on the split of) instructions.yaml beside this recipe"):
        config.load(SCHEMAS[stage], write(tmp_path, {key: "sft"}))


def test_missing_file_and_bad_yaml_are_named(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: file not found"):
        config.load(PretrainRecipe, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: [1\n")
    with pytest.raises(UserError, match=r"bad\.yaml:\d+: not valid YAML"):
        config.load(PretrainRecipe, bad)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("sample_prompt: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.yaml: not UTF-8 text \(byte offset 18: b'\\xe9"):
        config.load(PretrainRecipe, latin1)


def test_a_recipe_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfsample_prompt: Hello\n")
    assert config.load(PretrainRecipe, tmp_path / "bom.yaml").sample_prompt == "Hello"


def test_nested_dataclasses_and_literals_are_checked(tmp_path):
    @dataclass
    class Inner:
        mode: str = "a"

    @dataclass
    class Outer:
        inner: list[Inner] = field(default_factory=list)

    assert config.load(Outer, write(tmp_path, {"inner": [{"mode": "b"}]})).inner == [Inner("b")]
    with pytest.raises(UserError, match=r"unknown key `inner\[0\]\.mood`"):
        config.load(Outer, write(tmp_path, {"inner": [{"mood": "b"}]}))
    with pytest.raises(UserError, match=r"`data\.documents` must be one of 'paragraphs', 'lines', 'files'"):
        from llmpipe import params

        params.load(write(tmp_path, {"recipe": "x", "accelerate_config": "y", "data": {"documents": "pages"}}))


SCHEMAS = {
    "tokenizer": TokenizerRecipe, "corpus": CorpusRecipe, "pretrain": PretrainRecipe,
    "classify": ClassifyRecipe, "sft": SftRecipe, "lora": LoraRecipe, "evaluate": EvaluateRecipe,
    "instructions": InstructionTask, "judge-model": JudgeModelRecipe, "adaptation": AdaptationRecipe, "dpo": DpoRecipe,
}
STAGE_RECIPES = sorted(p for p in (REPO / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_is_valid_and_builds_its_library_objects(path, tmp_path):
    schema = SCHEMAS[path.stem]
    recipe = config.load(schema, path)
    for section in dataclasses.fields(schema):
        library, settings = section.metadata.get("library"), getattr(recipe, section.name)
        if library is not None and settings:
            owned = {"output_dir": str(tmp_path), "report_to": []} if issubclass(library, TrainingArguments) else {}
            if settings.get("bf16") and not torch.cuda.is_available():
                owned["use_cpu"] = True  # a GPU recipe (bf16) checked on a machine without one
            library(**settings, **owned)


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*/adaptation.yaml")), ids=lambda p: p.parent.name)
def test_every_adaptation_method_makes_a_valid_classify_recipe(path):
    for name in config.load(AdaptationRecipe, path).methods:
        recipe = config.load(ClassifyRecipe, path.with_name("classify.yaml"), changes_from=f"{path}:methods.{name}")
        if recipe.trainable in PEFT_METHODS:
            PEFT_METHODS[recipe.trainable](**getattr(recipe, recipe.trainable))


def test_the_adaptation_methods_in_params_are_defined_by_the_default_recipe():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = config.load(AdaptationRecipe, REPO / "recipes" / params["recipe"] / "adaptation.yaml").methods
    assert params["adaptation"] and set(params["adaptation"]) <= set(methods)


def test_every_recipe_folder_has_every_stage():
    for folder in {p.parent for p in STAGE_RECIPES}:
        assert {p.stem for p in folder.glob("*.yaml")} == set(SCHEMAS), folder


def test_cli_reports_a_missing_recipe_without_traceback(tmp_path, capsys):
    argv = ["corpus", "--params", str(REPO / "params.yaml"), "--recipe", str(tmp_path / "missing.yaml")]
    assert_refused(cli.main(argv), capsys.readouterr().err, "missing.yaml: file not found")


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_cli_help_lists_every_command_and_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as top:
        cli.main(["--help"])
    assert top.value.code == 0 and re.search(rf"^ +{re.escape(command)}\s", capsys.readouterr().out, re.MULTILINE)
    module_name = cli.COMMANDS[command][0]
    parser = argparse.ArgumentParser()
    importlib.import_module(module_name).add_arguments(parser)
    unexplained = [action.dest for action in parser._actions if not action.help]
    assert not unexplained, f"llmpipe {command} --help: no help for {unexplained}"
    with pytest.raises(SystemExit) as own:
        cli.main([command, "--help"])
    shown = capsys.readouterr().out
    assert own.value.code == 0 and f"usage: llmpipe {command}" in shown
    assert ("recipe keys: " in shown) == module_name.startswith("llmpipe.stages.")  # a stage lists its recipe's keys
