import pytest
import torch

from llmpipe.data.packing import causal_lm_batch
from llmpipe.errors import UserError
from llmpipe.stages.pretrain import PretrainRecipe, build_model, check_recipe, loss_curve


def test_batch_labels_keep_the_end_of_text_token(tokenizer):
    eos = tokenizer.eos_token_id
    batch = causal_lm_batch([{"input_ids": [5, 6, eos, 7]}, {"input_ids": [eos, 1, 2, 3]}])
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert (batch["labels"] == eos).sum() == 2  # pad == eos, yet no EOS is masked out of the loss


@pytest.mark.parametrize(
    "recipe, culprit",
    [
        (PretrainRecipe(model={"n_embd": 100, "n_head": 3}), r"`model.n_embd` \(100\) must be divisible by `model.n_head` \(3\)"),
        (PretrainRecipe(model={"eos_token_id": 3}), "`model.eos_token_id` is set by llmpipe from the tokenizer"),
        (PretrainRecipe(init_from="gpt2", model={"n_layer": 2}), "`model` must be empty with `init_from`"),
        (PretrainRecipe(score_only=True), "`score_only: true` scores pretrained weights: set `init_from`"),
    ],
)
def test_recipe_mistakes_are_named(recipe, culprit, tmp_path):
    with pytest.raises(UserError, match=culprit):
        check_recipe(recipe, tmp_path / "pretrain.yaml")


def test_model_takes_vocabulary_and_special_ids_from_the_tokenizer(tokenizer, tmp_path):
    model = build_model(PretrainRecipe(model={"n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}), tokenizer, 32, tmp_path)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id != 50256


def test_vocabulary_padded_to_a_multiple_keeps_the_tokenizer_and_has_no_pad_token_id_while_training(tokenizer, tmp_path):
    recipe = PretrainRecipe(model={"n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}, pad_to_multiple_of=64)
    model = build_model(recipe, tokenizer, 32, tmp_path)
    assert model.config.vocab_size % 64 == 0 and 0 <= model.config.vocab_size - len(tokenizer) < 64
    assert model.get_input_embeddings().weight.shape[0] == model.lm_head.weight.shape[0] == model.config.vocab_size
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    assert model.config.pad_token_id is None  # else every eager forward checks the inputs for padding (a GPU sync)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_context_longer_than_the_model_is_named(tokenizer, tmp_path):
    with pytest.raises(UserError, match=r"blocks have 64 tokens but the model's n_positions is 32"):
        build_model(PretrainRecipe(model={"n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}), tokenizer, 64, tmp_path)


def test_loss_curve_merges_the_two_evaluations_of_each_step():
    history = [
        {"loss": 5.0, "step": 5},
        {"eval_train_loss": 4.0, "step": 10},
        {"eval_validation_loss": 4.5, "step": 10},
    ]
    csv = loss_curve({"eval_train_loss": 7.0, "eval_validation_loss": 7.1}, history, tokens_per_step=100)
    assert csv.splitlines() == ["step,tokens_seen,train_loss,val_loss", "0,0,7.0,7.1", "10,1000,4.0,4.5"]


def test_init_from_continues_from_saved_weights(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = build_model(PretrainRecipe(init_from=str(tmp_path)), tokenizer, 32, tmp_path)
    for name, weight in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name


def test_init_from_with_another_tokenizer_is_refused(tiny_model, tokenizer, verdict_texts, tmp_path):
    from llmpipe.stages.tokenizer import TokenizerRecipe, train_bpe

    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    other = train_bpe(verdict_texts, TokenizerRecipe(trainer={"vocab_size": 300, "show_progress": False}))
    with pytest.raises(UserError, match="vocabulary is not .*; set the same `init_from"):
        build_model(PretrainRecipe(init_from=str(tmp_path)), other, 32, tmp_path)


def test_score_only_scores_a_local_folder_as_it_is_and_saves_the_same_weights(inside, tmp_path, capsys):
    """Book ch5.5: the weights of a folder (here the pretrain stage's own) loaded and scored, not trained:
    its validation loss is the one the training run reported, and the weights come out unchanged."""
    import json

    from safetensors.torch import load_file

    from llmpipe import cli

    trained = json.loads((inside / "metrics/pretrain.json").read_text())
    out = tmp_path / "scored"
    code = cli.main(["pretrain", "--set", "init_from=artifacts/pretrain", "--set", "score_only=true", "--set", "model={}",
                     "--output", str(out), "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "p.csv"),
                     "--checkpoints", str(tmp_path / "checkpoints")])
    assert code == 0
    scored = json.loads((tmp_path / "m.json").read_text())
    assert scored["steps"] == 0 and scored["val_loss"] == pytest.approx(trained["val_loss"], abs=1e-3)
    assert scored["initial_val_loss"] == scored["val_loss"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{out}: scored as it is, val loss {scored['val_loss']:.3f} (perplexity" in summary
    before, after = load_file(inside / "artifacts/pretrain/model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_summary_line_names_the_folder_the_speed_and_the_loss_change_once(inside, tmp_path, capsys):
    import json

    from llmpipe import cli

    code = cli.main(["pretrain", "--set", "training.max_steps=2", "--output", str(tmp_path / "out"), "--metrics",
                     str(tmp_path / "m.json"), "--plots", str(tmp_path / "p.csv"), "--checkpoints", str(tmp_path / "checkpoints")])
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("pretrain: ") and f"-> {tmp_path / 'out'}: {metrics['tokens_per_second']:.0f} tokens/s" in summary
    assert summary.count("val loss") == 1
    assert f"val loss {metrics['initial_val_loss']:.3f} -> {metrics['val_loss']:.3f} (perplexity" in summary
