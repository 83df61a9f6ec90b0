"""The whole pipeline on the `test` recipe, run by DVC in a copy of the repository, as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_from_disk
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from llmpipe.data.packing import count_blocks
from llmpipe.data.spam import LABELS, SpamSplit, balanced_splits, read_messages
from tests.conftest import ADAPTED, BIN, run_cli, sh

STAGES = ["tokenizer", "corpus", "pretrain", "classify", "sft", "dpo", "lora", "judge-model", "meta-evaluate", "evaluate", "adaptation"]
ADAPT_STAGES = [f"adapt@{method}" for method in ADAPTED]
ADAPT_RUNS = [f"classify-{method}" for method in ADAPTED]  # their MLflow runs
EVALUATED = ["sft", "lora", "dpo", "pretrain"]  # each model's judged answers: an MLflow GenAI evaluation run in llmpipe-evaluations


def mlflow_runs(repo: Path, experiment_name: str = "llmpipe") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name)
    return client, client.search_runs([experiment.experiment_id])


def test_every_stage_writes_its_outputs_and_metrics(repo):
    corpus = json.loads((repo / "metrics/corpus.json").read_text())
    assert corpus["train_blocks"] > 0 and corpus["validation_blocks"] > 0
    assert corpus["validation_documents"] + corpus["train_documents"] == corpus["documents"]
    blocks = load_from_disk(str(repo / "artifacts/corpus"))
    for split in ("train", "validation"):  # the test recipe's window: 32 tokens every 16
        assert len(blocks[split]) == corpus[f"{split}_blocks"] == count_blocks(corpus[f"{split}_tokens"], 32, 16)
    assert blocks["train"][0]["input_ids"][16:] == blocks["train"][1]["input_ids"][:16]
    tokenizer = json.loads((repo / "metrics/tokenizer.json").read_text())
    assert tokenizer["vocab_size"] == 512 and tokenizer["validation_bytes_per_token"] > 1.5
    pretrain = json.loads((repo / "metrics/pretrain.json").read_text())
    assert pretrain["val_loss"] < pretrain["initial_val_loss"] - 0.5  # it learned
    assert pretrain["steps"] == 30 and pretrain["tokens_per_second"] > 0
    curve = (repo / "plots/pretrain.csv").read_text().splitlines()
    assert curve[0] == "step,tokens_seen,train_loss,val_loss" and len(curve) == 1 + 4  # steps 0, 10, 20, 30
    assert (repo / "artifacts/pretrain/model.safetensors").is_file()


def test_fine_tuning_stages_write_their_metrics(repo):
    classify = json.loads((repo / "metrics/classify.json").read_text())
    for split in ("train", "validation", "test"):
        for key in ("accuracy", "precision", "recall", "f1"):
            assert 0 <= classify[f"{split}_{key}"] <= 1 and 0 <= classify[f"baseline_{split}_{key}"] <= 1
    assert 0 < classify["trainable_fraction"] < 0.5  # the test recipe trains LoRA adapters
    # the saved (merged) classifier scores what the stage reported
    test_split = balanced_splits(read_messages(repo / "data/sms_spam/SMSSpamCollection"), SpamSplit())["test"]
    classifier = pipeline("text-classification", model=str(repo / "artifacts/classify"))
    predicted = [r["label"] for r in classifier(list(test_split["text"]), truncation=True, max_length=48, batch_size=64)]
    correct = sum(p == LABELS[label] for p, label in zip(predicted, test_split["label"]))
    assert abs(correct / len(test_split) - classify["test_accuracy"]) <= 1 / len(test_split)
    for stage in ("sft", "lora"):
        metrics = json.loads((repo / f"metrics/{stage}.json").read_text())
        assert metrics["val_loss"] < metrics["initial_val_loss"], stage
    assert json.loads((repo / "metrics/lora.json").read_text())["trainable_fraction"] < 0.5
    dpo = json.loads((repo / "metrics/dpo.json").read_text())
    assert dpo["val_reward_accuracy"] > dpo["initial_val_reward_accuracy"] == 0.5  # it learned to prefer the chosen answers


def test_meta_evaluation_measures_what_evaluate_reports_against_the_books_ratings(repo):
    metrics = json.loads((repo / "metrics/meta-evaluate.json").read_text())
    assert metrics["judge_model"] is None and list(metrics["measures"]) == ["rouge_l"]  # `judge: self` is not measured
    for half in ("development", "held-out"):
        assert metrics["measures"]["rouge_l"][half]["scored"] == 100 and metrics["measures"]["rouge_l"][half]["spearman"] > 0.5
    assert metrics["llama3_8b"]["development"]["spearman"] == pytest.approx(0.6984, abs=1e-4)
    assert metrics["headline"] == {"measure": "rouge_l", "held_out_spearman": metrics["measures"]["rouge_l"]["held-out"]["spearman"]}
    assert (repo / "plots/meta-evaluate.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_judges_every_test_example_of_every_model(repo):
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert metrics["judge"] == "self" and metrics["judge_model"] == "hf:artifacts/sft (reading: first_number)"
    assert metrics["test_examples"] == 6  # the test recipe's limit
    for model in ("sft", "lora", "dpo", "pretrain"):
        summary = metrics[model]
        assert summary["examples"] == 6 and summary["unscored"] == 0  # the hf judge always gives a number
        assert summary["judge_ci_low"] <= summary["judge_mean"] <= summary["judge_ci_high"]
        assert 0 <= summary["judge_mean"] <= 100 and 0 <= summary["rouge_l_mean"] <= 1
        # the test recipe's judge is `self`, a smoke test the meta-evaluation does not measure: ROUGE-L leads
        assert summary["headline"] == "rouge_l" and summary["headline_mean"] == summary["rouge_l_mean"]
        # the politeness measure of the preference data's train pairs, beside the answers' length
        assert set(summary["politeness"]) == {"impolite_rate", "polite_rate", "answer_words", "empty_answers"}
        assert all(0 <= summary["politeness"][rate] <= 1 for rate in ("impolite_rate", "polite_rate", "empty_answers"))
        rows = [json.loads(line) for line in (repo / f"artifacts/evaluate/{model}.jsonl").read_text().splitlines()]
        assert len(rows) == 6
        assert {"instruction", "input", "reference", "response", "judge_score", "judge_detail"} <= set(rows[0])
        assert sum(r["judge_score"] for r in rows) / 6 == pytest.approx(summary["judge_mean"], abs=1e-3)
    assert (repo / "artifacts/evaluate/scores.png").read_bytes()[:4] == b"\x89PNG"
    client, runs = mlflow_runs(repo)
    evaluate = next(r for r in runs if r.data.tags.get("llmpipe.stage") == "evaluate")
    assert evaluate.data.metrics["sft.judge_mean"] == pytest.approx(metrics["sft"]["judge_mean"])
    logged = [a.path for a in client.list_artifacts(evaluate.info.run_id, "evaluate")]
    assert {"evaluate/sft.json", "evaluate/lora.json", "evaluate/pretrain.json", "evaluate/scores.png"} <= set(logged)
    _, evaluations = mlflow_runs(repo, "llmpipe-evaluations")  # top-level runs: the UI's Evaluation runs list
    assert all(r.data.tags["llmpipe.stage_run"] == evaluate.info.run_id and "mlflow.parentRunId" not in r.data.tags for r in evaluations)
    assert sorted(r.info.run_name for r in evaluations) == sorted(f"{m} (test)" for m in EVALUATED)
    assert all(r.data.metrics["judge_score/mean"] == pytest.approx(metrics[r.data.tags["llmpipe.model"]]["judge_mean"], abs=0.05)
               for r in evaluations)  # the view shows scores to one decimal
    for run in evaluations:  # one trace per judged answer, each with its score: none dropped
        traces = client.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id, max_results=100)
        assert len(traces) == 6 and all(any(a.name == "judge_score" for a in t.info.assessments) for t in traces)
    assert 0 <= metrics["validity"]["auc"] <= 1 and metrics["validity"]["pairs"] == 6
    checked = [json.loads(line) for line in (repo / "artifacts/evaluate/validity.jsonl").read_text().splitlines()]
    assert len(checked) == 6 and all(row["reference"] != row["mismatched_reference"] for row in checked)
    assert metrics["validity"]["reference_mean"] == pytest.approx(sum(row["reference_score"] for row in checked) / 6, abs=1e-3)


def test_the_adaptation_experiment_tables_each_method_against_the_baseline(repo):
    table = json.loads((repo / "metrics/adaptation.json").read_text())
    staged = json.loads((repo / "metrics/classify.json").read_text())  # the classify stage's run joins as its method
    assert sorted(table["methods"]) == sorted([*ADAPTED, staged["trainable"]])
    assert table["methods"][staged["trainable"]]["test_accuracy"] == staged["test_accuracy"]
    for method in ADAPTED:
        run = json.loads((repo / f"metrics/adaptation/{method}.json").read_text())
        assert table["methods"][method]["test_accuracy"] == run["test_accuracy"]
        assert table["baseline_test_accuracy"] == run["baseline_test_accuracy"]
        assert 0 < table["methods"][method]["trainable_fraction"] < 0.01  # the head, or prompts + head
    assert (repo / "plots/adaptation.png").stat().st_size > 0
    assert (repo / "artifacts/adaptation/prompt_tuning/adapter_config.json").exists()  # an adapter, loaded by PEFT


def test_classifier_labels_texts_from_the_cli(repo):
    result = run_cli("classify-text", "--model", str(repo / "artifacts/classify"), "Free entry! Win cash now", "ok see you")
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] in ("ham", "spam") for line in result.stdout.splitlines()] == [True, True]


def test_instruction_models_load_with_stock_loaders(repo):
    base = AutoModelForCausalLM.from_pretrained(repo / "artifacts/pretrain")
    adapted = PeftModel.from_pretrained(base, repo / "artifacts/lora/adapter")
    merged = AutoModelForCausalLM.from_pretrained(repo / "artifacts/lora/merged")
    inputs = AutoTokenizer.from_pretrained(repo / "artifacts/lora/merged")(["Name a colour."], return_tensors="pt")
    torch.testing.assert_close(merged(**inputs).logits, adapted(**inputs).logits, atol=1e-4, rtol=1e-4)
    for folder in ("artifacts/sft", "artifacts/lora/merged"):
        tokenizer = AutoTokenizer.from_pretrained(repo / folder)
        config = AutoModelForCausalLM.from_pretrained(repo / folder).generation_config
        assert config.eos_token_id == tokenizer.eos_token_id and config.pad_token_id == tokenizer.pad_token_id


def test_saved_model_loads_with_stock_transformers_and_generates(repo):
    folder = str(repo / "artifacts/pretrain")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    out = pipeline("text-generation", model=folder, max_new_tokens=8, do_sample=False)("I had always")
    assert out[0]["generated_text"].startswith("I had always") and len(out[0]["generated_text"]) > len("I had always")


def test_mlflow_holds_one_parent_with_a_nested_run_per_stage(repo):
    client, runs = mlflow_runs(repo)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["llmpipe.stage"] for r in children) == sorted(STAGES + ADAPT_RUNS)
    for run in children:
        assert run.info.status == "FINISHED" and run.data.params and run.data.metrics
        assert run.data.tags["llmpipe.recipe"] == "test"
    # the pipeline's run spans its stages, so the runs list shows what the pipeline cost
    assert parents[0].info.status == "FINISHED"
    assert parents[0].info.start_time <= min(r.info.start_time for r in children)
    assert parents[0].info.end_time >= max(r.info.end_time for r in children)
    pretrain = next(r for r in children if r.data.tags["llmpipe.stage"] == "pretrain")
    assert pretrain.data.params["training.learning_rate"] == "0.003"
    history = client.get_metric_history(pretrain.info.run_id, "eval_validation_loss")
    assert len(history) >= 3 and history[-1].value < history[0].value  # logged by step by Trainer's callback
    assert "val_loss" in pretrain.data.metrics
    sft = next(r for r in children if r.data.tags["llmpipe.stage"] == "sft")
    assert "validation_responses.json" in [a.path for a in client.list_artifacts(sft.info.run_id)]


CARDS = {  # artifact folder -> (its metrics, model-index metric type, metrics key)
    "pretrain": ("pretrain", "loss", "val_loss"),
    "classify": ("classify", "accuracy", "test_accuracy"),
    "sft": ("sft", "loss", "val_loss"),
    "lora/adapter": ("lora", "loss", "val_loss"),
    "lora/merged": ("lora", "loss", "val_loss"),
    "dpo": ("dpo", "accuracy", "test_reward_accuracy"),  # the last of its accuracies: validation's, then test's
}


def test_every_artifact_has_a_model_card_with_its_metrics(repo):
    for folder, (stage, metric_type, key) in CARDS.items():
        card = ModelCard.load(repo / "artifacts" / folder / "README.md")
        scores = {result.metric_type: result.metric_value for result in card.data.eval_results}
        assert scores[metric_type] == json.loads((repo / f"metrics/{stage}.json").read_text())[key], folder
        assert card.data.license == "apache-2.0" and "llmpipe" in card.data.tags
    adapter = ModelCard.load(repo / "artifacts/lora/adapter/README.md").data
    assert adapter.library_name == "peft" and adapter.base_model == "artifacts/pretrain"  # PEFT's own card had ''
    assert ModelCard.load(repo / "artifacts/tokenizer/README.md").data.llmpipe["metrics"]["vocab_size"] == 512
    assert not list((repo / "artifacts").rglob("training_args.bin"))  # Trainer's pickle stays out


def test_the_adapter_cards_usage_snippet_runs(repo):
    text = (repo / "artifacts/lora/adapter/README.md").read_text()
    snippet = text.split("```python\n")[1].split("```")[0]
    result = subprocess.run([sys.executable, "-c", snippet], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()


def test_models_are_registered_in_mlflow_and_load_back(repo):
    import mlflow

    client, runs = mlflow_runs(repo)
    for stage in ("pretrain", "classify", "sft", "lora", "dpo"):
        (version,) = client.search_model_versions(f"name = 'llmpipe-{stage}'")
        run = client.get_run(version.run_id)
        assert run.data.tags["llmpipe.stage"] == stage
        logged = client.get_logged_model(version.source.removeprefix("models:/"))
        assert {m.key for m in logged.metrics} >= {"tokens_per_second"}  # the stage's metrics attach to the model
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    generator = mlflow.transformers.load_model("models:/llmpipe-sft/1")
    out = generator("I had always", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert out.startswith("I had always") and len(out) > len("I had always")
    adapter = mlflow.transformers.load_model("models:/llmpipe-lora/1", return_type="components")["model"]
    assert isinstance(adapter, PeftModel)  # logged as an adapter on its base, not as a full copy


def test_push_dry_run_lists_one_commit_with_the_judged_card(repo):
    result = run_cli("push", "lora", "--repo-id", "someone/tiny-lora", "--base-model", "someone/tiny-pretrain", "--dry-run", cwd=repo)
    assert result.returncode == 0, result.stderr
    files, card_text = result.stdout.split("--- someone/tiny-lora/README.md ---\n")
    assert "add adapter_model.safetensors" in files and "add README.md" in files and ".bin" not in files
    card = ModelCard(card_text)
    judged = next(r for r in card.data.eval_results if r.metric_type == "judge_score")
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert judged.metric_value == evaluation["lora"]["judge_mean"] and "hf:artifacts/sft" in judged.metric_config
    assert card.data.base_model == "someone/tiny-pretrain" and "'someone/tiny-lora'" in card.text


def test_second_repro_does_nothing(repo):
    result = sh(repo, "dvc", "repro")
    for stage in STAGES + ADAPT_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout
    _, runs = mlflow_runs(repo)
    assert len(runs) == 1 + len(STAGES) + len(ADAPT_RUNS)
    assert len(mlflow_runs(repo, "llmpipe-evaluations")[1]) == len(EVALUATED)


@pytest.mark.slow
def test_stages_rerun_with_the_same_inputs_write_the_same_bytes_so_nothing_after_them_reruns(own_repo):
    # each `dvc repro` is a new process: another datasets scratch folder, another string-hash salt for PEFT's sets
    for stage in ("corpus", "lora"):
        sh(own_repo, "dvc", "repro", "-f", "-s", stage)
        assert json.loads(sh(own_repo, "dvc", "status", "--json").stdout) == {}, f"{stage}'s outputs changed"


@pytest.mark.slow  # a minute and a half of `dvc exp run`; what DVC does with a changed recipe file, not our code
def test_exp_run_with_a_recipe_value_reruns_that_stage_and_what_depends_on_it(own_repo):
    sh(own_repo, "dvc", "exp", "run", "-S", "recipes/test/sft.yaml:training.learning_rate=0.001")
    baseline = json.loads(sh(own_repo, "dvc", "exp", "show", "--json").stdout)[1]
    (experiment,) = baseline["experiments"][0]["revs"]
    assert experiment["data"]["params"]["recipes/test/sft.yaml"]["data"]["training"]["learning_rate"] == 0.001
    assert experiment["data"]["metrics"]["metrics/sft.json"]["data"]["val_loss"] > 0
    assert "training.learning_rate" in sh(own_repo, "dvc", "params", "diff").stdout
    assert "val_loss" in sh(own_repo, "dvc", "metrics", "show").stdout
    sh(own_repo, "dvc", "plots", "show", "-o", "dvc_plots")
    assert (own_repo / "dvc_plots/index.html").is_file()
    _, runs = mlflow_runs(own_repo)
    exp_runs = [r for r in runs if r.data.tags.get("dvc.exp_name")]
    rerun = sorted(r.data.tags.get("llmpipe.stage") for r in exp_runs if "mlflow.parentRunId" in r.data.tags)
    assert rerun == ["dpo", "evaluate", "sft"]  # sft and what depends on it; pretrain, classify, lora are untouched


def kill_when_saved(repo: Path, stage: str, step: int) -> None:
    """`dvc repro -s STAGE`, SIGKILLed (dvc, accelerate and the trainer alike) once checkpoint-STEP is complete."""
    state = repo / "checkpoints" / stage / f"checkpoint-{step}" / "trainer_state.json"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(["dvc", "repro", "-s", stage], cwd=repo, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not state.is_file():
            assert run.poll() is None, f"{stage} ended before checkpoint-{step} was saved"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert run.poll() is None, f"{stage} finished before it could be killed"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()


def lengthen(repo: Path, stage: str, **training) -> None:
    """Make the test recipe's stage long enough to be killed part-way (a new recipe: nothing in DVC's run cache)."""
    path = repo / "recipes" / "test" / f"{stage}.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe["training"] |= training
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def resume_then_rerun(repo: Path, stage: str, step: int) -> tuple[dict, dict]:
    """After a kill: `dvc repro` resumes; then a forced uninterrupted run of the same recipe. Both metrics."""
    assert not (repo / "metrics" / f"{stage}.json").exists()  # DVC removed the old outputs; nothing new was written
    resumed = sh(repo, "dvc", "repro", "-s", stage)
    assert f"resuming from checkpoints/{stage}/checkpoint-{step}" in resumed.stdout
    after_resume = json.loads((repo / "metrics" / f"{stage}.json").read_text())
    fresh = sh(repo, "dvc", "repro", "-f", "-s", stage)  # -f: run it, not DVC's cached result
    assert "resuming" not in fresh.stdout  # the resumed run finished: its checkpoints are not resumed again
    return after_resume, json.loads((repo / "metrics" / f"{stage}.json").read_text())


# A resumed run restores weights, optimizer, scheduler, RNG states and the data position: on a CPU its
# losses match an uninterrupted run's to float rounding.
RESUME_TOLERANCE = 1e-3


@pytest.mark.slow
def test_killed_pretrain_resumes_under_dvc_repro_and_ends_like_an_uninterrupted_run(own_repo):
    lengthen(own_repo, "pretrain", max_steps=400, save_steps=25, eval_steps=100)
    kill_when_saved(own_repo, "pretrain", 25)
    refused = run_cli("pretrain", "--set", "model.n_embd=64", cwd=own_repo)  # another shape may not continue it
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "checkpoints/pretrain: holds checkpoints of an unfinished run" in refused.stderr
    assert "recipe.model.n_embd: 32 there, 64 now" in refused.stderr
    assert (own_repo / "checkpoints/pretrain/checkpoint-25/trainer_state.json").is_file()

    after_resume, uninterrupted = resume_then_rerun(own_repo, "pretrain", 25)
    assert after_resume["steps"] == uninterrupted["steps"] == 400
    assert after_resume["train_tokens"] == uninterrupted["train_tokens"]
    for key in ("initial_val_loss", "train_loss", "val_loss"):
        assert after_resume[key] == pytest.approx(uninterrupted[key], abs=RESUME_TOLERANCE), key


@pytest.mark.slow
def test_killed_lora_resumes_under_dvc_repro_and_ends_like_an_uninterrupted_run(own_repo):
    lengthen(own_repo, "lora", max_steps=60, save_steps=10)
    kill_when_saved(own_repo, "lora", 10)
    after_resume, uninterrupted = resume_then_rerun(own_repo, "lora", 10)
    assert after_resume["trainable_parameters"] == uninterrupted["trainable_parameters"]
    for key in ("initial_val_loss", "train_loss", "val_loss"):
        assert after_resume[key] == pytest.approx(uninterrupted[key], abs=RESUME_TOLERANCE), key
