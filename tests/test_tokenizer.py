import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from llmpipe import cli
from llmpipe.errors import UserError
from llmpipe.stages.tokenizer import TokenizerRecipe, bytes_per_token, check_trainer


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_utf8_text_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_end_of_text_is_one_special_token_and_the_pad(tokenizer):
    ids = tokenizer("the end<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|endoftext|>"


def test_vocabulary_size_comes_from_the_recipe_and_merges_compress(tokenizer, verdict_texts):
    assert len(tokenizer) == 400
    assert bytes_per_token(tokenizer, [verdict_texts]) > 1.5  # bytes alone would give 1.0


def test_saved_tokenizer_loads_with_stock_autotokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "I had always thought Jack Gisburn rather a cheap genius"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_vocabulary_too_small_for_the_byte_alphabet_is_named():
    with pytest.raises(UserError, match=r"`trainer\.vocab_size` must be at least 257"):
        check_trainer(TokenizerRecipe(trainer={"vocab_size": 100}), "tokenizer.yaml")


def test_stage_trains_on_train_documents_only(tmp_path, monkeypatch, capsys):
    # Each document repeats its own made-up word; only words of train documents may become tokens.
    words = [f"q{chr(97 + i // 26)}{chr(97 + i % 26)}zz" for i in range(60)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join([w] * 30) for w in words), encoding="utf-8")
    (tmp_path / "params.yaml").write_text(json.dumps({
        "recipe": "r", "accelerate_config": "none",
        "data": {"files": [str(tmp_path / "corpus.txt")], "validation_fraction": 0.2},
        "mlflow": {"enabled": False},
    }))
    (tmp_path / "tok.yaml").write_text(json.dumps({"trainer": {"vocab_size": 400, "min_frequency": 2}}))
    monkeypatch.chdir(tmp_path)
    code = cli.main(["tokenizer", "--params", str(tmp_path / "params.yaml"), "--recipe", str(tmp_path / "tok.yaml"),
                     "--output", str(tmp_path / "tok"), "--metrics", str(tmp_path / "m.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "-token vocabulary -> " in out
    from llmpipe.data.documents import load
    from llmpipe.params import DataParams

    splits = load(DataParams(files=[str(tmp_path / "corpus.txt")], validation_fraction=0.2), tmp_path / "work").splits
    vocab = AutoTokenizer.from_pretrained(tmp_path / "tok").get_vocab()
    word_token = lambda doc: "Ġ" + doc.split()[0]  # the word as a non-initial, space-prefixed token
    assert all(word_token(doc) in vocab for doc in splits["train"]["text"])
    assert not any(word_token(doc) in vocab for doc in splits["validation"]["text"])
    assert json.loads((tmp_path / "m.json").read_text())["vocab_size"] == len(vocab)


def test_init_from_takes_an_existing_tokenizer(tokenizer, tmp_path):
    from llmpipe.artifacts import load_tokenizer

    tokenizer.save_pretrained(tmp_path)
    taken = load_tokenizer(tmp_path)
    assert taken.get_vocab() == tokenizer.get_vocab() and taken.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("offline", [True, False])
def test_a_reloaded_tokenizer_saves_the_same_bytes_online_or_offline(tokenizer, tmp_path, monkeypatch, offline):
    """HF_HUB_OFFLINE (read by from_pretrained as offline mode) must not end up in an artifact."""
    import transformers.tokenization_utils_base as loading

    from llmpipe import artifacts

    tokenizer.save_pretrained(tmp_path / "saved")
    monkeypatch.setattr(loading, "is_offline_mode", lambda: offline)
    artifacts.load_tokenizer(tmp_path / "saved").save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer_config.json").read_bytes() == (tmp_path / "saved" / "tokenizer_config.json").read_bytes()
