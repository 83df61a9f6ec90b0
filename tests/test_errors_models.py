"""Bad models: a folder without a model, weights that do not fit their config or task, a tokenizer from
another run, checkpoints of another shape."""

import copy
import json
import shutil

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from llmpipe import artifacts, cli
from llmpipe.stages.classify import load_classifier
from tests.conftest import assert_refused, outputs_snapshot, staging_leftovers


def test_a_model_folder_without_a_model_is_named(inside, capsys, tmp_path):
    assert_refused(cli.main(["generate", "--model", str(tmp_path), "--prompt", "Hi"]), capsys.readouterr().err,
                   f"{tmp_path}: cannot load", "point to a folder a stage wrote")


def test_a_stage_whose_base_is_not_a_model_names_it(inside, capsys, tmp_path):
    before = outputs_snapshot(inside)
    assert_refused(cli.main(["sft", "--base", str(tmp_path)]), capsys.readouterr().err, f"{tmp_path}: cannot load")
    assert outputs_snapshot(inside) == before and not staging_leftovers(inside)


def test_a_tokenizer_from_another_run_is_refused(inside, capsys, tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path)
    bigger = type(tokenizer).from_pretrained("artifacts/tokenizer")  # the workspace's: 512 tokens, the model has fewer
    bigger.save_pretrained(tmp_path)
    assert_refused(cli.main(["generate", "--model", str(tmp_path), "--prompt", "Hi"]), capsys.readouterr().err,
                   f"{tmp_path}: the tokenizer has 512 tokens but the model's vocabulary holds {tiny_model.config.vocab_size}")


def test_a_corpus_packed_with_another_tokenizer_is_refused_before_training(inside, capsys, tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "smaller")  # 400 tokens; the workspace's corpus was packed with 512
    before = outputs_snapshot(inside)
    assert_refused(cli.main(["pretrain", "--tokenizer", str(tmp_path / "smaller")]), capsys.readouterr().err,
                   "artifacts/corpus: holds token id", f"beyond the 400-token vocabulary of {tmp_path / 'smaller'}")
    assert outputs_snapshot(inside) == before


def test_checkpoints_of_another_shape_are_refused_and_kept(inside, capsys):
    run_file = inside / "checkpoints/pretrain/llmpipe-run.json"
    finished = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**finished, "finished": False}))  # as if the workspace's pretrain had been killed
    saved, outputs = sorted(p.name for p in run_file.parent.iterdir()), outputs_snapshot(inside)
    try:
        code = cli.main(["pretrain", "--set", "model.n_embd=64"])
    finally:
        run_file.write_text(json.dumps(finished))
    assert_refused(code, capsys.readouterr().err, "checkpoints/pretrain: holds checkpoints of an unfinished run",
                   "recipe.model.n_embd: 32 there, 64 now", "--restart")
    assert sorted(p.name for p in run_file.parent.iterdir()) == saved and outputs_snapshot(inside) == outputs


def test_weights_that_do_not_fit_their_config_are_named(inside, capsys, tmp_path):
    changed = shutil.copytree("artifacts/pretrain", tmp_path / "fewer-layers")
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "n_layer": config["n_layer"] - 1}))
    assert_refused(cli.main(["generate", "--model", str(changed), "--prompt", "Hi"]), capsys.readouterr().err,
                   f"{changed}: its weights do not fit a causal language model built from its config.json",
                   f"transformer.h.{config['n_layer'] - 1}.")
    (changed / "config.json").write_text(json.dumps({**config, "n_embd": config["n_embd"] * 2}))
    assert_refused(cli.main(["generate", "--model", str(changed), "--prompt", "Hi"]), capsys.readouterr().err,
                   f"{changed}: its weights do not fit", "of another shape: transformer.h.0.attn.c_attn.bias")


def test_truncated_weights_are_named(inside, capsys, tmp_path):
    cut = shutil.copytree("artifacts/pretrain", tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_refused(cli.main(["generate", "--model", str(cut), "--prompt", "Hi"]), capsys.readouterr().err,
                   f"{cut}: cannot load a causal language model")


def test_a_model_of_another_task_is_named(inside, capsys, tmp_path):
    assert_refused(cli.main(["classify-text", "--model", "artifacts/pretrain", "Hi"]), capsys.readouterr().err,
                   "artifacts/pretrain: its weights do not fit a classifier", "missing from its weights: score.weight")
    load_classifier("artifacts/pretrain", {}).save_pretrained(tmp_path / "classifier")
    shutil.copy("artifacts/pretrain/tokenizer.json", tmp_path / "classifier")
    assert_refused(cli.main(["generate", "--model", str(tmp_path / "classifier"), "--prompt", "Hi"]), capsys.readouterr().err,
                   "its weights do not fit a causal language model built from its config.json", "score.weight")


def test_an_empty_text_to_classify_is_named(inside, capsys):
    assert_refused(cli.main(["classify-text", "fine", " "]), capsys.readouterr().err, "text 2 is empty")


def test_a_checkpoint_in_the_hubs_gpt2_layout_still_loads(tmp_path):
    """OpenAI's GPT-2 on the Hub: no `transformer.` prefix, no lm_head (tied), and the attention-mask
    buffers `attn.bias` / `attn.masked_bias` that the current model class no longer has."""
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=300, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    state = {key.removeprefix("transformer."): value for key, value in model.state_dict().items() if key != "lm_head.weight"}
    for layer in range(config.n_layer):
        state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    config.save_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = artifacts.load_causal_lm(tmp_path)
    assert torch.equal(loaded.transformer.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight)
    assert load_classifier(str(tmp_path), {}).config.id2label == {0: "ham", 1: "spam"}


def test_a_base_with_its_own_output_layer_becomes_a_classifier(tmp_path):
    """Untied embeddings (most causal LMs but GPT-2): the classifier drops `lm_head` and adds its head."""
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=300, bos_token_id=0, eos_token_id=0,
                        tie_word_embeddings=False)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    assert load_classifier(str(tmp_path), {}).config.num_labels == 2


def test_a_model_folder_without_its_tokenizer_is_named(inside, capsys, tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "weights-only")
    assert_refused(cli.main(["generate", "--model", str(tmp_path / "weights-only"), "--prompt", "Hi"]), capsys.readouterr().err,
                   f"{tmp_path / 'weights-only'}: no tokenizer in this folder")


def test_an_adapter_folder_given_as_a_whole_model_is_named_with_its_base(inside, capsys, tmp_path, tiny_model, tokenizer):
    from peft import TaskType, get_peft_model

    from llmpipe import adapters

    adapter = tmp_path / "adapter"
    get_peft_model(copy.deepcopy(tiny_model), adapters.lora_config({"r": 2}, TaskType.CAUSAL_LM, tiny_model)).save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    before = outputs_snapshot(inside)
    assert_refused(cli.main(["sft", "--base", str(adapter)]), capsys.readouterr().err,
                   f"{adapter}: holds a PEFT adapter, not a whole causal language model", "merged model folder")
    assert outputs_snapshot(inside) == before


def test_a_missing_folder_inside_an_existing_one_is_named_as_a_path_not_tried_as_a_hub_id(inside, capsys):
    assert_refused(cli.main(["generate", "--model", "artifacts/missing", "--prompt", "Hi"]), capsys.readouterr().err,
                   "artifacts/missing: no such folder")
