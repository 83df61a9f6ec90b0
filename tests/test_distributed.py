"""Accelerate configurations, and two CPU processes training like one process with twice the gradient
accumulation (same global batch): as data parallel copies (DDP) and sharded (FSDP2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env

from tests.conftest import REPO, run_cli

ACCELERATE = REPO / "recipes" / "accelerate"
TEST_RECIPES = REPO / "recipes" / "test"
NO_DROPOUT = ["--set", "model.resid_pdrop=0", "--set", "model.embd_pdrop=0", "--set", "model.attn_pdrop=0"]
# Training losses agree to float rounding. Evaluation losses differ a little more: two processes split the
# evaluation set into other batches and repeat a few examples to even them out.
TRAIN_LOSS_TOLERANCE = 1e-4
EVAL_LOSS_TOLERANCE = 0.02

# config -> (processes, distributed settings `accelerate launch` derives from it)
EXPECTED = {
    "cpu.yaml": (1, {"multi_gpu": False, "use_fsdp": False, "use_deepspeed": False}),
    "cpu-2proc.yaml": (2, {"multi_gpu": True, "cpu": False}),
    "gpu.yaml": (1, {"multi_gpu": False, "mixed_precision": "bf16"}),
    "ddp.yaml": (8, {"multi_gpu": True, "mixed_precision": "bf16"}),
    "fsdp.yaml": (8, {"use_fsdp": True, "mixed_precision": "bf16"}),
    "fsdp-cpu-2proc.yaml": (2, {"use_fsdp": True, "mixed_precision": "no"}),
    "deepspeed-zero2.yaml": (8, {"use_deepspeed": True, "zero_stage": 2, "mixed_precision": "bf16"}),
    "two-machines.yaml": (16, {"multi_gpu": True, "num_machines": 2, "main_process_port": 29500}),
}


def launch_args(config: Path):
    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "llmpipe", "pretrain"])
    return _validate_launch_command(args)[0]


def test_every_shipped_accelerate_config_is_covered():
    assert sorted(p.name for p in ACCELERATE.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_parses_into_the_intended_launch(name):
    processes, settings = EXPECTED[name]
    args = launch_args(ACCELERATE / name)
    assert args.num_processes == processes
    for key, value in settings.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("name", ["fsdp.yaml", "fsdp-cpu-2proc.yaml"])
def test_fsdp_config_shards_gpt2_blocks_and_saves_a_full_state_dict(name):
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    env = prepare_multi_gpu_env(launch_args(ACCELERATE / name))
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == GPT2Block.__name__
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"  # the output loads with stock from_pretrained


def test_a_config_with_an_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ACCELERATE / "cpu.yaml").read_text() + "num_procesess: 2\n")
    with pytest.raises(ValueError, match="num_procesess"):
        launch_args(bad)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with params.yaml (MLflow on, in the folder; the repository's data), and the test recipe's tokenizer and corpus."""
    work = tmp_path_factory.mktemp("distributed")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params |= {"recipe": "test", **{key: str(REPO / params[key]) for key in ("instruction_data", "preference_data", "classify_data")}}
    params["data"]["files"] = [str(REPO / "data/text/the-verdict.txt")]
    params["mlflow"]["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    params["mlflow"]["log_models"] = False  # the runs are counted; logging and registering each model is the e2e test's
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("tokenizer", "corpus"):
        result = run_cli(stage, "--recipe", str(TEST_RECIPES / f"{stage}.yaml"), cwd=work)
        assert result.returncode == 0, result.stderr
    return work


def launch(work: Path, config: str, stage: str, name: str, *extra: str, env: dict | None = None) -> dict:
    """One training stage under `accelerate launch`, writing to <name>* paths; its metrics and log history."""
    argv = [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--quiet", "--config_file", str(ACCELERATE / config),
        "-m", "llmpipe", stage, "--recipe", str(TEST_RECIPES / f"{stage}.yaml"), "--output", name,
        "--checkpoints", f"checkpoints-{name}", "--metrics", f"{name}.json", *extra,
    ]
    result = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"{stage}: ") == 1  # one summary line: rank 0's
    (state,) = (work / f"checkpoints-{name}").glob("checkpoint-*/trainer_state.json")
    return {"metrics": json.loads((work / f"{name}.json").read_text()), "history": json.loads(state.read_text())["log_history"]}


def assert_same_training(one: dict, two: dict) -> None:
    """The same training losses step by step, and the same losses before and after where the stage reports them."""
    train_losses = [[(e["step"], e["loss"]) for e in run["history"] if "loss" in e] for run in (one, two)]
    assert len(train_losses[0]) >= 2
    for (step_one, loss_one), (step_two, loss_two) in zip(*train_losses, strict=True):
        assert step_one == step_two and loss_two == pytest.approx(loss_one, rel=TRAIN_LOSS_TOLERANCE)
    for key in ("initial_train_loss", "initial_val_loss", "train_loss", "val_loss"):
        if key in one["metrics"]:
            assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=EVAL_LOSS_TOLERANCE), key


# name -> (stage, options) of the runs compared on one and on two processes. All but pretrain start from the
# one-process pretrain run's model (no dropout, so every process computes the same function).
RUNS = {
    "pretrain": ("pretrain", NO_DROPOUT),
    "classify-all": ("classify", ["--base", "pretrain-1", "--set", "trainable=all"]),
    "classify-lora": ("classify", ["--base", "pretrain-1", "--set", "trainable=lora"]),
    "sft": ("sft", ["--base", "pretrain-1"]),
    "lora": ("lora", ["--base", "pretrain-1"]),
    "dpo": ("dpo", ["--base", "pretrain-1"]),
}


@pytest.fixture(scope="module")
def one_process(workdir):
    """The one-process run of a RUNS name with the two-process runs' global batch (twice the gradient
    accumulation), launched once and shared by the DDP and FSDP tests; writes to <name>-1*."""
    done = {}

    def run(name: str) -> dict:
        if name not in done:
            if name != "pretrain":
                run("pretrain")  # the model the others start from
            stage, options = RUNS[name]
            done[name] = launch(workdir, "cpu.yaml", stage, f"{name}-1", *options, "--set", "training.gradient_accumulation_steps=2")
        return done[name]

    return run


@pytest.mark.distributed
def test_two_processes_train_like_one_with_twice_the_accumulation(workdir, one_process):
    one = one_process("pretrain")
    before = set(workdir.iterdir())
    two = launch(workdir, "cpu-2proc.yaml", "pretrain", "pretrain-2", *NO_DROPOUT, "--plots", "p2.csv")
    assert_same_training(one, two)
    assert two["metrics"]["train_tokens"] == one["metrics"]["train_tokens"]  # counted over both processes
    # rank 1 wrote nothing but its share of the checkpoint (its RNG state)
    written = {p.name for p in set(workdir.iterdir()) - before}
    assert written == {"pretrain-2", "pretrain-2.json", "p2.csv", "checkpoints-pretrain-2"}
    assert {p.name for p in (workdir / "pretrain-2").iterdir()} == {p.name for p in (workdir / "pretrain-1").iterdir()}

    # sft starts from the one-process model (no dropout, so the two runs see the same function)
    sft_one = one_process("sft")
    sft_two = launch(workdir, "cpu-2proc.yaml", "sft", "sft-2", "--base", "pretrain-1")
    assert_same_training(sft_one, sft_two)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("llmpipe").experiment_id])
    stages = sorted(r.data.tags["llmpipe.stage"] for r in runs if r.data.tags["llmpipe.stage"] in ("pretrain", "sft"))
    assert stages == ["pretrain", "pretrain", "sft", "sft"]  # one run per launch, not per process


@pytest.mark.distributed
def test_two_processes_save_one_lora_adapter_and_rank_0_merges_it(workdir, one_process):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    one = one_process("lora")
    before = set(workdir.iterdir())
    two = launch(workdir, "cpu-2proc.yaml", "lora", "lora-2", *RUNS["lora"][1])
    assert_same_training(one, two)

    written = {p.name for p in set(workdir.iterdir()) - before}
    assert written == {"lora-2", "lora-2.json", "checkpoints-lora-2"}  # rank 1 saved into a scratch folder
    assert not list((workdir / "lora-2").rglob("training_args.bin"))
    base = workdir / "pretrain-1"
    inputs = AutoTokenizer.from_pretrained(base)(["Name a colour."], return_tensors="pt")
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), workdir / "lora-2/adapter")
    merged = AutoModelForCausalLM.from_pretrained(workdir / "lora-2/merged")
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(base)(**inputs).logits
        adapted_logits = adapted.eval()(**inputs).logits
        assert not torch.allclose(adapted_logits, base_logits, atol=1e-4)  # the adapter trained
        torch.testing.assert_close(merged.eval()(**inputs).logits, adapted_logits, atol=1e-4, rtol=1e-4)


def saved_models(folder: Path, stage: str) -> dict[str, "torch.nn.Module"]:
    """Every model a stage saved under `folder`, loaded with the stock loaders: subfolder -> model in eval mode
    (a full model where config.json is, the adapter on its base where adapter_config.json is)."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    full, adapter = ((AutoModelForSequenceClassification, AutoPeftModelForSequenceClassification) if stage == "classify"
                     else (AutoModelForCausalLM, AutoPeftModelForCausalLM))
    models = {str(c.parent.relative_to(folder)): full.from_pretrained(c.parent) for c in folder.rglob("config.json")}
    models |= {str(c.parent.relative_to(folder)): adapter.from_pretrained(c.parent) for c in folder.rglob("adapter_config.json")}
    return {name: model.eval() for name, model in models.items()}


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(RUNS))
def test_fsdp_on_two_processes_trains_and_saves_like_one_process(workdir, one_process, monkeypatch, name):
    """FSDP2 over two CPU processes (gloo): the training losses of one process with twice the accumulation, and
    saved folders (full models, adapters, merged adapters) that load with the stock loaders and give its logits."""
    import torch
    from transformers import AutoTokenizer

    stage, options = RUNS[name]
    one = one_process(name)
    sharded = launch(workdir, "fsdp-cpu-2proc.yaml", stage, f"{name}-fsdp", *options,
                     env={"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow-fsdp.db'}"})  # the DDP test counts the runs in mlflow.db
    # sharded indeed: FSDP's own checkpoint format (accelerate would otherwise fall back to DDP without a word)
    assert list((workdir / f"checkpoints-{name}-fsdp").glob("checkpoint-*/pytorch_model_fsdp.bin"))
    assert_same_training(one, sharded)

    monkeypatch.chdir(workdir)  # an adapter names its base as the stage was given it: pretrain-1
    inputs = AutoTokenizer.from_pretrained("pretrain-1")(["Name a colour."], return_tensors="pt")
    expected, saved = saved_models(Path(f"{name}-1"), stage), saved_models(Path(f"{name}-fsdp"), stage)
    assert sorted(saved) == sorted(expected)
    with torch.no_grad():
        for folder, model in saved.items():
            torch.testing.assert_close(model(**inputs).logits, expected[folder](**inputs).logits, atol=1e-4, rtol=1e-4, msg=folder)
