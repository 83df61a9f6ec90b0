"""Bad recipes and params: the message names the file and key and says how to fix it; nothing is written."""

import pytest
import yaml

from llmpipe import cli
from tests.conftest import assert_refused, outputs_snapshot, sh, staging_leftovers

CASES = {
    "unknown key, closest suggested": (
        ["pretrain", "--set", "training.learnig_rate=0.001"],
        ["recipes/test/pretrain.yaml", "`training.learnig_rate`", "did you mean `training.learning_rate`"],
    ),
    "wrong type": (["pretrain", "--set", "model.n_layer=two"], ["recipes/test/pretrain.yaml", "model.n_layer"]),
    "no layers": (["pretrain", "--set", "model.n_layer=-1"], ["recipes/test/pretrain.yaml: `model.n_layer` must be at least 1 (got -1)"]),
    "n_embd not divisible by n_head": (
        ["pretrain", "--set", "model.n_embd=30", "--set", "model.n_head=4"],
        ["`model.n_embd` (30) must be divisible by `model.n_head` (4)"],
    ),
    "context above n_positions": (
        ["pretrain", "--set", "model.n_positions=16"],
        ["the corpus blocks have 32 tokens but the model's n_positions is 16", "raise `model.n_positions`"],
    ),
    "negative learning rate": (
        ["pretrain", "--set", "training.learning_rate=-0.001"],
        ["recipes/test/pretrain.yaml", "`training.learning_rate` must be above 0 (got -0.001)"],
    ),
    "a learning rate that is not a number": (
        ["sft", "--set", "training.learning_rate=.nan"], ["recipes/test/sft.yaml: `training.learning_rate` must be a finite number (got nan)"],
    ),
    "an infinite weight decay": (
        ["pretrain", "--set", "training.weight_decay=.inf"], ["recipes/test/pretrain.yaml: `training.weight_decay` must be a finite number (got inf)"],
    ),
    "an Adam beta the optimizer refuses": (
        ["lora", "--set", "training.adam_beta2=1.5"], ["recipes/test/lora.yaml: `training.adam_beta2` must be at least 0 and below 1 (got 1.5)"],
    ),
    "a dropout that is not a probability": (
        ["pretrain", "--set", "model.attn_pdrop=2"], ["recipes/test/pretrain.yaml: `model.attn_pdrop` must be between 0 and 1 (a probability) (got 2)"],
    ),
    "zero batch size": (
        ["sft", "--set", "training.per_device_train_batch_size=0"],
        ["recipes/test/sft.yaml", "`training.per_device_train_batch_size` must be above 0"],
    ),
    "a Hub token in a recipe": (
        ["pretrain", "--set", "training.hub_token=hf_secret"],
        ["recipes/test/pretrain.yaml: `training.hub_token` is set by llmpipe from `llmpipe push`", "remove it"],
    ),
    "remote code switched on": (
        ["sft", "--set", "training.trust_remote_code=true"],
        ["recipes/test/sft.yaml: `training.trust_remote_code` is set by llmpipe", "never runs"],
    ),
    "a shard size that is not a size": (
        ["corpus", "--set", "shard_size=abc"], ["recipes/test/corpus.yaml: `shard_size` must be a size such as 500MB or 2GB (got abc)"],
    ),
    "a judge endpoint's timeout at or below zero": (
        ["evaluate", "--set", "judge.timeout=-1"], ["recipes/test/evaluate.yaml: `judge.timeout` must be above 0 seconds (got -1)"],
    ),
    "a value TrainingArguments refuses, named by its key": (
        ["pretrain", "--set", "training.eval_strategy=sometimes"],
        ["recipes/test/pretrain.yaml: `training.eval_strategy`: sometimes is not a valid IntervalStrategy"],
    ),
    "a sampling filter with greedy decoding": (
        ["evaluate", "--set", "decoding.top_p=0.9"],
        ["recipes/test/evaluate.yaml: `decoding.top_p` filters sampling, and `decoding.temperature: 0` decodes greedily"],
    ),
    "a stride longer than a block": (
        ["corpus", "--set", "stride=64"], ["recipes/test/corpus.yaml: `stride` must be at most context_length (32), got 64"],
    ),
    "no evaluation before training, where the stage reports the losses before it": (
        ["sft", "--set", "training.eval_on_start=false"],
        ["recipes/test/sft.yaml: `training.eval_on_start` is set by llmpipe from the stage", "remove it"],
    ),
    "a classifier's problem type in its model section": (
        ["classify", "--set", "model.problem_type=multi_label_classification"],
        ["recipes/test/classify.yaml: `model.problem_type` is set by llmpipe from the two labels", "remove it"],
    ),
    "a chat template that would add tokens to a LoRA run's tokenizer": (
        ["lora", "--set", "training.chat_template_path=HuggingFaceTB/SmolLM2-135M-Instruct"],
        ["recipes/test/lora.yaml: `training.chat_template_path` is set by llmpipe from instructions.yaml's prompt_format"],
    ),
    "no training steps": (
        ["sft", "--set", "training.max_steps=0", "--set", "training.num_train_epochs=0"],
        ["recipes/test/sft.yaml: `training` trains for no steps"],
    ),
    "vocabulary smaller than bytes + specials": (
        ["tokenizer", "--set", "trainer.vocab_size=100"],
        ["recipes/test/tokenizer.yaml", "`trainer.vocab_size` must be at least 257"],
    ),
    "a trainer alphabet other than the bytes": (
        ["tokenizer", "--set", "trainer.initial_alphabet=[a, b]"],
        ["recipes/test/tokenizer.yaml: `trainer.initial_alphabet` is set by llmpipe", "remove it"],
    ),
    "a corpus batch of no documents": (
        ["corpus", "--set", "batch_size=0"], ["recipes/test/corpus.yaml: `batch_size` must be at least 1 (got 0)"],
    ),
    "no new tokens for the sample": (
        ["pretrain", "--set", "sample_max_new_tokens=0"],
        ["recipes/test/pretrain.yaml: `sample_max_new_tokens` must be at least 1 (got 0)"],
    ),
    "negative new tokens in evaluation": (
        ["evaluate", "--set", "decoding.max_new_tokens=-3"],
        ["recipes/test/evaluate.yaml: `decoding.max_new_tokens` must be at least 1 (got -3)"],
    ),
    "negative temperature in evaluation": (
        ["evaluate", "--set", "decoding.temperature=-0.5"],
        ["recipes/test/evaluate.yaml: `decoding.temperature` must be 0 (greedy, the book's) or a positive finite number (sampling) (got -0.5)"],
    ),
    "top_p above 1 in evaluation": (
        ["evaluate", "--set", "decoding.top_p=1.5"], ["recipes/test/evaluate.yaml: `decoding.top_p` must be in (0, 1]"],
    ),
    "confidence given in percent": (
        ["evaluate", "--set", "bootstrap.confidence=95"],
        ["recipes/test/evaluate.yaml: `bootstrap.confidence` must be between 0 and 1, for example 0.95 (got 95)"],
    ),
    "an override that is not YAML": (
        ["pretrain", "--set", "training.learning_rate=[3e-4"], ["--set 'training.learning_rate=[3e-4'", "not valid YAML"],
    ),
    "more new tokens than the context in evaluation": (
        ["evaluate", "--set", "decoding.max_new_tokens=512", "--set", "models={pretrain: artifacts/pretrain}",
         "--set", "judge.model=artifacts/pretrain"],
        ["recipes/test/evaluate.yaml: `decoding.max_new_tokens` (512) leaves no room for a prompt", "context of 512 tokens"],
    ),
    "missing recipe file": (["pretrain", "--recipe", "recipes/test/pretrian.yaml"], ["recipes/test/pretrian.yaml: file not found"]),
    "not YAML": (["corpus", "--set", "stride"], ["--set 'stride': expected KEY=VALUE"]),
}


@pytest.mark.parametrize("argv, culprits", CASES.values(), ids=CASES.keys())
def test_bad_recipe_value_is_named_and_nothing_is_written(inside, capsys, argv, culprits):
    before = outputs_snapshot(inside)
    assert_refused(cli.main(argv), capsys.readouterr().err, *culprits)
    assert outputs_snapshot(inside) == before and not staging_leftovers(inside)


def test_a_recipe_name_without_a_folder_is_named(inside, capsys, tmp_path):
    params = yaml.safe_load((inside / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "recipe": "tinny"}))
    code = cli.main(["corpus", "--params", str(tmp_path / "params.yaml")])
    assert_refused(code, capsys.readouterr().err, "recipes/tinny/corpus.yaml: file not found", "`recipe:` name in params.yaml")


def test_a_bad_params_key_is_named(inside, capsys, tmp_path):
    params = yaml.safe_load((inside / "params.yaml").read_text())
    params["mlflow"]["tracking_url"] = "x"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = cli.main(["corpus", "--params", str(tmp_path / "params.yaml")])
    assert_refused(code, capsys.readouterr().err, "params.yaml", "`mlflow.tracking_url`", "did you mean `mlflow.tracking_uri`")


def test_a_missing_accelerate_config_is_named_by_dvc_and_checkout_restores_the_outputs(own_repo):
    params = (own_repo / "params.yaml").read_text()
    uncached = {path: (own_repo / path).read_bytes() for path in ("metrics/pretrain.json", "plots/pretrain.csv")}
    (own_repo / "params.yaml").write_text(params.replace("recipes/accelerate/cpu.yaml", "recipes/accelerate/cpu-typo.yaml"))
    try:
        result = sh(own_repo, "dvc", "repro", "-s", "pretrain", check=False)
    finally:
        (own_repo / "params.yaml").write_text(params)
        for path, content in uncached.items():  # DVC removed them before failing; they are not in its cache
            (own_repo / path).write_bytes(content)
    assert result.returncode != 0 and "recipes/accelerate/cpu-typo.yaml" in result.stderr
    assert "No such file or directory" in result.stderr
    sh(own_repo, "dvc", "checkout")  # the last complete outputs come back from DVC's cache
    assert (own_repo / "artifacts/pretrain/model.safetensors").is_file()
    assert "pretrain" not in sh(own_repo, "dvc", "status").stdout


@pytest.mark.parametrize(
    "argv, culprit",
    [(["lora", "--set", "lora.r=0"], "recipes/test/lora.yaml: `r` should be a positive integer value"),
     (["lora", "--set", "lora.target_modules=[nope]"], "recipes/test/lora.yaml: Target modules {'nope'} not found in the base model"),
     (["lora", "--set", "lora.task_type=SEQ_CLS"], "recipes/test/lora.yaml: `lora.task_type` is set by llmpipe"),
     (["classify", "--set", "trainable=lora", "--set", "lora.lora_dropout=2"], "recipes/test/classify.yaml: `lora.lora_dropout` must be between 0 and 1 (a probability) (got 2)")],
)
def test_a_peft_section_peft_refuses_is_named_before_any_training(inside, capsys, tmp_path, argv, culprit):
    before = outputs_snapshot(inside)
    assert_refused(cli.main([*argv, "--checkpoints", str(tmp_path / "checkpoints")]), capsys.readouterr().err, culprit)
    assert outputs_snapshot(inside) == before and not (tmp_path / "checkpoints").exists()


def test_a_sample_prompt_that_cannot_be_continued_names_its_recipe_keys(inside, capsys, tmp_path):
    argv = ["pretrain", "--set", "sample_max_new_tokens=100000", "--output", str(tmp_path / "out"),
            "--checkpoints", str(tmp_path / "checkpoints"), "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "p.csv")]
    assert_refused(cli.main(argv), capsys.readouterr().err,
                   "recipes/test/pretrain.yaml: `sample_prompt`, `sample_max_new_tokens`: the prompt", "max_new_tokens (100000)")
    assert not (tmp_path / "out").exists()
