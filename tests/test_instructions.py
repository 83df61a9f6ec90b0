import argparse
import copy
import importlib
import json
import shutil
from pathlib import Path

import pytest

from llmpipe.data import instructions
from llmpipe.errors import UserError
from llmpipe.stages import base, tuning
from llmpipe.stages.evaluate import EvaluateRecipe, scored_entries
from llmpipe.stages.lora import LoraRecipe
from tests.conftest import REPO

DATA = REPO / "data" / "instruction-data.json"


def test_book_split_sizes_in_order():
    entries = instructions.load(DATA)
    parts = instructions.split(entries, {"train": 0.85, "test": 0.1, "validation": 0.05})
    assert [len(parts[n]) for n in ("train", "test", "validation")] == [935, 110, 55]
    assert parts["train"][0] == entries[0] and parts["validation"][-1] == entries[-1]


def test_json_and_jsonl_give_the_same_entries(tmp_path):
    entries = instructions.load(DATA)[:5]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(e) for e in entries))
    assert instructions.load(tmp_path / "d.jsonl") == entries


def test_bad_jsonl_line_is_named_by_its_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": }\n')
    with pytest.raises(UserError, match=r"d\.jsonl: not valid JSON at line 3, column 32"):
        instructions.load(path)


def test_alpaca_prompt_is_the_books_format():
    entry = {"instruction": "Convert to passive.", "input": "The cat ate it.", "output": "It was eaten."}
    assert instructions.prompt_completion(entry, "alpaca") == {
        "prompt": "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nConvert to passive.\n\n### Input:\nThe cat ate it.\n\n### Response:\n",
        "completion": "It was eaten.",
    }
    assert "### Input" not in instructions.alpaca_prompt({"instruction": "Say hi.", "input": "", "output": "hi"})


def test_messages_entries_and_chat_format(tokenizer):
    entry = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}]}
    pair = instructions.prompt_completion(entry, "chat")
    assert pair["completion"] == [{"role": "assistant", "content": "Hello."}] and len(pair["prompt"]) == 2
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = instructions.CHAT_TEMPLATE
    prompt = instructions.prompt_text(entry, "chat", tokenizer)
    full = tokenizer.apply_chat_template(entry["messages"], tokenize=False)
    assert full.startswith(prompt) and full[len(prompt):] == "Hello.<|endoftext|>\n"


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', r"entry 1: missing `output`"),
        ('[{"instruction": "a", "output": "b"},\n {"instruction": }]', r"not valid JSON at line 2, column 18"),
        ('[{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "r"}]}]', "entry 0: the last message must be the assistant's"),
        ('[]', "non-empty list"),
        ('["just text"]', "entry 0: expected an object"),
    ],
)
def test_malformed_data_is_named(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        instructions.load(path)


def test_a_bad_jsonl_entry_is_named_by_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n')  # a blank line between
    with pytest.raises(UserError, match=r"data\.jsonl:3: missing `output`"):
        instructions.load(path)


def test_a_conversation_the_alpaca_prompt_cannot_show_names_the_setting_that_can(tmp_path):
    path = tmp_path / "data.json"
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"messages": turns}, {"instruction": "c", "output": "d"}]))
    thirds = {"train": 1 / 3, "validation": 1 / 3, "test": 1 / 3}
    with pytest.raises(UserError, match=r"data\.json: entry 1: a system message or several turns.*`prompt_format: chat` in recipes/x/instructions\.yaml"):
        instructions.InstructionTask(split=thirds).splits(path, Path("recipes/x/instructions.yaml"))
    assert instructions.InstructionTask(split=thirds, prompt_format="chat").splits(path, Path("i.yaml"))["validation"] == [{"messages": turns}]


def stage_job(stage: str, recipe_folder: Path, params: Path, *extra: str):
    """The job a stage builds from its command line (`--recipe` in `recipe_folder`), nothing run."""
    module = importlib.import_module(f"llmpipe.stages.{stage}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(["--params", str(params), "--recipe", str(recipe_folder / f"{stage}.yaml"), *extra])
    schema = {"sft": tuning.SftRecipe, "lora": LoraRecipe, "evaluate": EvaluateRecipe}[stage]
    return base.begin(args, stage, schema)


def test_sft_and_lora_never_train_on_what_evaluate_tests(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # params.yaml names the instruction data relative to the repository root
    recipe = tmp_path / "recipe"
    shutil.copytree(REPO / "recipes/test", recipe)
    (recipe / "instructions.yaml").write_text("split: {train: 0.6, validation: 0.1, test: 0.3}\nprompt_format: chat\n")
    params = REPO / "params.yaml"
    tested, task = scored_entries(stage_job("evaluate", recipe, params, "--set", "limit=null"))
    assert task.prompt_format == "chat" and len(tested) == 330  # 30 % of the 1,100 instructions, as the file says
    tested_keys = {json.dumps(entry, sort_keys=True) for entry in tested}
    for stage in ("sft", "lora"):
        splits, stage_task = base.instruction_splits(stage_job(stage, recipe, params))
        assert stage_task == task
        trained = {json.dumps(entry, sort_keys=True) for entry in splits["train"] + splits["validation"]}
        assert len(splits["train"]) == 660 and not trained & tested_keys, stage
