import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from llmpipe import cli
from llmpipe.errors import UserError
from llmpipe.generation import Decoding, continue_text, decoding
from tests.conftest import assert_refused, run_cli


def test_greedy_takes_the_most_likely_token_each_step(tiny_model, tokenizer):
    ids = tokenizer("I had", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, tiny_model(ids).logits[:, -1:].argmax(-1)], dim=1)
    n_prompt = len(tokenizer("I had")["input_ids"])
    expected = tokenizer.decode(ids[0, n_prompt:], skip_special_tokens=True)
    assert continue_text(tiny_model, tokenizer, "I had", decoding(tokenizer, Decoding(12))) == expected


def test_sampling_follows_the_seed(tiny_model, tokenizer):
    hot = decoding(tokenizer, Decoding(12, temperature=5.0, top_k=50))
    samples = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        samples.append(continue_text(tiny_model, tokenizer, "I had", hot))
    assert samples[0] == samples[1] != samples[2]


def test_top_k_one_is_greedy(tiny_model, tokenizer):
    torch.manual_seed(0)
    top1 = continue_text(tiny_model, tokenizer, "The", decoding(tokenizer, Decoding(10, temperature=2.0, top_k=1)))
    assert top1 == continue_text(tiny_model, tokenizer, "The", decoding(tokenizer, Decoding(10)))


def test_empty_prompt_and_too_many_tokens_are_errors(tiny_model, tokenizer):
    with pytest.raises(UserError, match="prompt is empty"):
        continue_text(tiny_model, tokenizer, "  ", decoding(tokenizer, Decoding(5)))
    with pytest.raises(UserError, match="exceeds the model's context of 256 tokens"):
        continue_text(tiny_model, tokenizer, "The", decoding(tokenizer, Decoding(300)))


def test_cli_streams_the_same_tokens_the_saved_model_generates(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    expected = continue_text(tiny_model, tokenizer, "I had always", decoding(tokenizer, Decoding(15)))
    result = run_cli("generate", "--model", str(tmp_path), "--prompt", "I had always", "--max-new-tokens", "15")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("I had always" + expected).strip()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert continue_text(reloaded, tokenizer, "I had always", decoding(tokenizer, Decoding(15))) == expected
    pipe = pipeline("text-generation", model=str(tmp_path), max_new_tokens=15, do_sample=False)
    assert pipe("I had always", return_full_text=False)[0]["generated_text"] == expected


def test_cli_sampling_follows_the_seed(tiny_model, tokenizer, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    samples = []
    for seed in ("1", "1", "2"):
        argv = ["generate", "--model", str(tmp_path), "--prompt", "I had", "--temperature", "5", "--top-k", "50", "--seed", seed]
        assert cli.main(argv) == 0
        samples.append(capsys.readouterr().out)
    assert samples[0] == samples[1] != samples[2]


def test_cli_names_a_folder_without_a_model(tmp_path, capsys):
    code = cli.main(["generate", "--model", str(tmp_path), "--prompt", "hi"])
    assert_refused(code, capsys.readouterr().err, str(tmp_path), "cannot load")


def test_sampling_without_top_k_draws_from_every_token(tiny_model, tokenizer):
    """transformers would fill an unset top_k with 50; unset here means no filter, as the book samples."""
    torch.manual_seed(0)
    settings = decoding(tokenizer, Decoding(60, temperature=5.0))
    inputs = tokenizer("I had", return_tensors="pt")
    out = tiny_model.generate(**inputs, generation_config=settings, return_dict_in_generate=True, output_logits=True)
    drawn = out.sequences[0, inputs["input_ids"].shape[1]:]
    ranks = [int((logits[0] > logits[0, token]).sum()) for logits, token in zip(out.logits, drawn)]
    assert max(ranks) >= 50  # a top-50 filter would never draw these
