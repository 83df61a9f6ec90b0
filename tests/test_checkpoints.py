import json

import pytest
from transformers import TrainingArguments

from llmpipe.errors import UserError
from llmpipe.runtime import checkpoints
from llmpipe.stages.pretrain import PretrainRecipe


@pytest.fixture
def training(tmp_path):
    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)


def identity(tiny_model, tmp_path, base_weights=None, **training):
    data = tmp_path / "data.txt"
    data.write_text("some text")
    return checkpoints.run_identity(PretrainRecipe(training={"learning_rate": 3e-3, **training}), tiny_model, base_weights, [data])


def checkpoint(folder, step, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_a_fresh_start_records_the_run_then_resumes_from_the_newest_complete_checkpoint(tiny_model, tmp_path, training):
    folder, run = tmp_path / "checkpoints", identity(tiny_model, tmp_path)
    assert checkpoints.resume_point(folder, run, False, training) is None
    checkpoint(folder, 5)
    checkpoint(folder, 10)
    checkpoint(folder, 15, complete=False)  # killed while saving it
    assert checkpoints.resume_point(folder, run, False, training) == str(folder / "checkpoint-10")


@pytest.mark.parametrize(
    "change, named",
    [
        ({"learning_rate": 1e-3}, "recipe.training.learning_rate: 0.003 there, 0.001 now"),
        ({"weight_decay": 0.1}, "recipe.training.weight_decay: 'unset' there, 0.1 now"),
    ],
)
def test_an_unfinished_run_of_another_recipe_is_refused_and_kept(tiny_model, tmp_path, training, change, named):
    folder = tmp_path / "checkpoints"
    checkpoints.resume_point(folder, identity(tiny_model, tmp_path), False, training)
    checkpoint(folder, 5)
    with pytest.raises(UserError, match=named) as refused:
        checkpoints.resume_point(folder, identity(tiny_model, tmp_path, **change), False, training)
    assert "--restart" in str(refused.value) and (folder / "checkpoint-5").is_dir()


def test_another_model_shape_or_training_data_is_refused(tiny_model, tokenizer, tmp_path, training):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "checkpoints"
    checkpoints.resume_point(folder, identity(tiny_model, tmp_path), False, training)
    checkpoint(folder, 5)
    wider = GPT2LMHeadModel(GPT2Config(**{**tiny_model.config.to_dict(), "n_embd": 64}))
    with pytest.raises(UserError, match="model.n_embd: 32 there, 64 now"):
        checkpoints.resume_point(folder, identity(wider, tmp_path), False, training)
    (tmp_path / "data.txt").write_text("other text")
    other_data = checkpoints.run_identity(PretrainRecipe(training={"learning_rate": 3e-3}), tiny_model, None, [tmp_path / "data.txt"])
    with pytest.raises(UserError, match="data: '[0-9a-f]{64}' there"):
        checkpoints.resume_point(folder, other_data, False, training)


def test_a_base_model_retrained_to_the_same_shape_is_refused(tiny_model, tmp_path, training):
    import copy

    import torch

    from llmpipe import artifacts

    tiny_model = copy.deepcopy(tiny_model)  # the session's model stays as it is for the other tests
    tiny_model.save_pretrained(tmp_path / "base")
    folder, started_from = tmp_path / "checkpoints", artifacts.weights_digest(tmp_path / "base")
    checkpoints.resume_point(folder, identity(tiny_model, tmp_path, started_from), False, training)
    checkpoint(folder, 5)
    with torch.no_grad():
        tiny_model.transformer.wte.weight[0, 0] += 1  # the base trained again: same shape, other weights
    tiny_model.save_pretrained(tmp_path / "base")
    retrained = artifacts.weights_digest(tmp_path / "base")
    with pytest.raises(UserError, match=f"base_weights: '{started_from}' there, '{retrained}' now"):
        checkpoints.resume_point(folder, identity(tiny_model, tmp_path, retrained), False, training)
    assert checkpoints.resume_point(folder, identity(tiny_model, tmp_path, started_from), False, training) == str(folder / "checkpoint-5")


def test_checkpoints_llmpipe_did_not_record_are_refused(tiny_model, tmp_path, training):
    folder = tmp_path / "checkpoints"
    checkpoint(folder, 5)
    with pytest.raises(UserError, match="llmpipe-run.json is missing"):
        checkpoints.resume_point(folder, identity(tiny_model, tmp_path), False, training)


def test_a_finished_run_or_restart_starts_over_and_clears_the_folder(tiny_model, tmp_path, training):
    folder, run = tmp_path / "checkpoints", identity(tiny_model, tmp_path)
    checkpoints.resume_point(folder, run, False, training)
    checkpoint(folder, 5)
    checkpoints.mark_finished(folder)
    assert checkpoints.resume_point(folder, identity(tiny_model, tmp_path, weight_decay=0.1), False, training) is None
    assert not (folder / "checkpoint-5").exists()
    checkpoint(folder, 5)
    assert checkpoints.resume_point(folder, run, True, training) is None  # --restart
    assert [p.name for p in folder.iterdir()] == ["llmpipe-run.json"]
