"""Bad data: the message names the file and the line, byte offset or entry, and says how to fix it; nothing is written."""

import json
import shutil

import pytest
import yaml

from llmpipe import cli
from tests.conftest import assert_refused, outputs_snapshot, staging_leftovers


def params_with(inside, tmp_path, **changes) -> str:
    params = yaml.safe_load((inside / "params.yaml").read_text())
    for key, value in changes.items():
        if key.startswith("data_"):
            params["data"][key.removeprefix("data_")] = value
        else:
            params[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def refused(inside, capsys, stage: str, params: str, *culprits: str, extra: tuple = ()) -> None:
    before = outputs_snapshot(inside)
    assert_refused(cli.main([stage, "--params", params, *extra]), capsys.readouterr().err, *culprits)
    assert outputs_snapshot(inside) == before and not staging_leftovers(inside)


def test_a_missing_corpus_file_is_named(inside, capsys, tmp_path):
    params = params_with(inside, tmp_path, data_files=["data/text/the-verdit.txt"])
    refused(inside, capsys, "tokenizer", params, "data/text/the-verdit.txt' matches no file")


def test_a_validation_fraction_out_of_range_is_named_before_any_document_is_read(inside, capsys, tmp_path):
    params = params_with(inside, tmp_path, data_validation_fraction=10, data_files=["data/no-such-file.txt"])
    refused(inside, capsys, "tokenizer", params, "`data.validation_fraction` must be between 0 and 1, for example 0.1 (got 10)")


def test_a_stage_run_before_the_one_it_reads_from_names_that_stage(inside, capsys, tmp_path):
    refused(inside, capsys, "pretrain", str(inside / "params.yaml"), f"{tmp_path / 'corpus'}: no packed corpus here; run `llmpipe corpus` first",
            extra=("--corpus", str(tmp_path / "corpus")))


def test_an_empty_corpus_file_is_named(inside, capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    refused(inside, capsys, "tokenizer", params_with(inside, tmp_path, data_files=[str(tmp_path / "empty.txt")]), "empty.txt")


def test_a_corpus_too_small_for_one_block_says_so(inside, capsys, tmp_path):
    (tmp_path / "tiny.txt").write_text("".join(f"Line {i}.\n\n" for i in range(20)))
    refused(inside, capsys, "corpus", params_with(inside, tmp_path, data_files=[str(tmp_path / "tiny.txt")]),
            "fewer than one block of 32", "lower `context_length` in recipes/test/corpus.yaml")


def test_text_that_is_not_utf8_names_file_and_byte_offset(inside, capsys, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Caf\u00e9 au lait.\n".encode("latin-1"))
    refused(inside, capsys, "tokenizer", params_with(inside, tmp_path, data_files=[str(tmp_path / "latin1.txt")]),
            "latin1.txt", "byte offset 3")


@pytest.mark.parametrize("line, culprit", [("maybe\tWin a prize", "label 'maybe'"), ("ham but no tab", "no tab")])
def test_a_bad_spam_line_is_named_by_number(inside, capsys, tmp_path, line, culprit):
    spam = tmp_path / "spam.tsv"
    spam.write_text("ham\tsee you at 5\nspam\tWIN cash now\n" + line + "\n")
    refused(inside, capsys, "classify", params_with(inside, tmp_path, classify_data=str(spam)), f"{spam}:3", culprit)


def test_instruction_json_that_does_not_parse_names_the_position(inside, capsys, tmp_path):
    bad = tmp_path / "instructions.json"
    bad.write_text('[{"instruction": "Say hi", "input": "", "output": "hi"},\n {"instruction": "oops"')
    refused(inside, capsys, "sft", params_with(inside, tmp_path, instruction_data=str(bad)), "instructions.json", "line 2")


def test_an_instruction_entry_missing_a_field_is_named_by_index(inside, capsys, tmp_path):
    entries = json.loads((inside / "data/instruction-data.json").read_text())[:20]
    del entries[7]["output"]
    bad = tmp_path / "instructions.json"
    bad.write_text(json.dumps(entries))
    refused(inside, capsys, "sft", params_with(inside, tmp_path, instruction_data=str(bad)), "instructions.json", "7", "output")


@pytest.mark.parametrize("split, culprits", [
    ("{train: 0.9499, test: 0.0001, validation: 0.05}", ["the test split is empty", "change `split`"]),  # comes out empty
    ("{train: 0.85, test: 0.10, validaton: 0.05}", ["unknown key `split.validaton`", "did you mean `split.validation`?"]),
])
def test_a_split_that_cannot_be_cut_is_named(inside, capsys, tmp_path, split, culprits):
    recipe = tmp_path / "recipe"
    shutil.copytree(inside / "recipes/test", recipe)
    (recipe / "instructions.yaml").write_text(f"split: {split}\n")
    refused(inside, capsys, "sft", params_with(inside, tmp_path), f"{recipe}/instructions.yaml: ", *culprits,
            extra=("--recipe", str(recipe / "sft.yaml")))


@pytest.mark.parametrize("stage, setting", [
    ("tokenizer", "data_files"), ("classify", "classify_data"), ("sft", "instruction_data"),
])
def test_a_folder_where_a_data_file_belongs_is_named(inside, capsys, tmp_path, stage, setting):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    value = [str(folder)] if setting == "data_files" else str(folder)
    refused(inside, capsys, stage, params_with(inside, tmp_path, **{setting: value}),
            f"{folder}: is a folder, not a file", f"`{setting.replace('data_', 'data.')}`")


@pytest.mark.parametrize("option", ["--recipe", "--params"])
def test_a_folder_given_as_a_recipe_or_params_file_is_named(inside, capsys, option):
    before = outputs_snapshot(inside)
    assert_refused(cli.main(["pretrain", option, "recipes/test"]), capsys.readouterr().err, "recipes/test: is a folder, not a file")
    assert outputs_snapshot(inside) == before


def test_a_file_given_as_a_model_folder_is_named(inside, capsys, tmp_path):
    refused(inside, capsys, "sft", params_with(inside, tmp_path), "params.yaml: is a file, not a model folder",
            extra=("--base", "params.yaml"))


def test_a_spam_file_of_one_label_says_so(inside, capsys, tmp_path):
    spam = tmp_path / "spam.tsv"
    spam.write_text("".join(f"ham\tmessage {i}\n" for i in range(50)))
    refused(inside, capsys, "classify", params_with(inside, tmp_path, classify_data=str(spam)),
            f"{spam}: every message is labelled 'ham'", "needs both ham and spam")


def test_instruction_data_with_no_answer_to_learn_from_is_named(inside, capsys, tmp_path):
    empty = tmp_path / "instructions.json"
    empty.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": " "} for i in range(40)]))
    refused(inside, capsys, "sft", params_with(inside, tmp_path, instruction_data=str(empty)),
            f"{empty}: every entry's answer", "nothing to learn from")


def test_spam_data_with_no_text_is_named(inside, capsys, tmp_path):
    spam = tmp_path / "spam.tsv"
    spam.write_text("".join(f"{label}\t \n" for label in ["ham", "spam"] * 20))
    refused(inside, capsys, "classify", params_with(inside, tmp_path, classify_data=str(spam)), f"{spam}: every message's text is empty")
