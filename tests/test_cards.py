import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load

from llmpipe.errors import UserError
from llmpipe.hub import cards

METRICS = {"val_loss": 4.25, "val_perplexity": 70.1, "initial_val_loss": 7.6, "tokens_per_second": 6000.0}
EVALUATION = {"judge_mean": 41.5, "rouge_l_mean": 0.21, "judge": "llama3", "judge_model": "openai:llama3@http://localhost:11434/v1"}


def facts(artifact: str, **changes) -> cards.CardFacts:
    made = cards.CardFacts(
        artifact=artifact, recipe="tiny", settings={"training.learning_rate": 0.003, "model.n_layer": 4},
        metrics=METRICS, data=["data/text/tinyshakespeare.txt", "data/instruction-data.json"], hub_data=[],
        base_model="artifacts/pretrain",
    )
    return cards.CardFacts(**{**made.__dict__, **changes})


def test_card_metadata_parses_and_holds_the_metrics_and_the_named_judge(tmp_path):
    card = cards.model_card(facts("sft"), "alice/tiny-sft", "apache-2.0", "en", EVALUATION, "alice/tiny-pretrain", on_hub=True)
    cards.write(tmp_path, card)
    loaded = ModelCard.load(tmp_path / "README.md")
    meta = metadata_load(tmp_path / "README.md")
    assert meta["license"] == "apache-2.0" and meta["language"] == "en" and meta["pipeline_tag"] == "text-generation"
    assert meta["base_model"] == "alice/tiny-pretrain" and meta["library_name"] == "transformers"
    scores = {(r.metric_type, r.dataset_split): r for r in loaded.data.eval_results}
    assert scores["loss", "validation"].metric_value == 4.25
    assert scores["judge_score", "test"].metric_value == 41.5
    assert "llama3" in scores["judge_score", "test"].metric_config  # the judge is named
    assert scores["rouge", "test"].metric_value == 0.21
    assert meta["model-index"][0]["name"] == "tiny-sft"
    assert cards.CardFacts(**meta["llmpipe"]) == facts("sft")  # what push re-renders from


def test_card_names_the_judge_and_how_far_to_trust_it():
    judged = EVALUATION | {"judge": "HuggingFaceTB/SmolLM2-135M-Instruct (artifacts/judge)", "judge_model": "hf:artifacts/judge",
                           "judge_validity": {"auc": 0.61, "win_rate": 0.72, "pairs": 110, "length_bias": 0.3}}
    card = cards.model_card(facts("lora-merged"), "alice/tiny-lora-merged", "apache-2.0", "en", judged, on_hub=True)
    assert "Judged by HuggingFaceTB/SmolLM2-135M-Instruct (artifacts/judge) (hf:artifacts/judge)." in card.text
    assert "AUC 0.61, paired win rate 72% (110 pairs; 0.5 is chance)" in card.text


def test_card_leads_with_the_measure_that_agrees_best_with_gpt4_and_names_that_agreement():
    led = EVALUATION | {"headline_mean": 55.4, "headline_agreement": {"measure": "judge_combined", "spearman_with_gpt4": 0.84}}
    card = cards.model_card(facts("sft"), "alice/tiny-sft", "apache-2.0", "en", led, on_hub=True)
    first, *rest = [r for r in card.data.eval_results if r.dataset_split == "test"]
    assert (first.metric_type, first.metric_value) == ("judge_combined", 55.4)
    assert "Spearman 0.84 with GPT-4 on the book's held-out ratings" in first.metric_name
    assert [r.metric_type for r in rest] == ["judge_score", "rouge"]  # the others stay reported
    by_overlap = EVALUATION | {"headline_agreement": {"measure": "rouge_l", "spearman_with_gpt4": 0.85}}
    first = [r for r in cards.model_card(facts("sft"), "x", "mit", "en", by_overlap).data.eval_results if r.dataset_split == "test"][0]
    assert first.metric_type == "rouge" and "Spearman 0.85" in first.metric_name and first.metric_value == 0.21


def test_card_names_each_data_files_source_and_license(tmp_path):
    text = str(cards.model_card(facts("sft", data=["data/text/tinyshakespeare.txt", "mine/notes.txt"]), "x", "mit", "en"))
    assert "karpathy/char-rnn" in text and "public domain" in text
    assert "`mine/notes.txt` | your data (not in data/SOURCES.md); license: unknown" in text
    assert "`training.learning_rate` | 0.003" in text


def test_a_hub_card_names_a_local_base_in_its_text_only(tmp_path):
    card = cards.model_card(facts("sft"), "alice/tiny-sft", "apache-2.0", "en", on_hub=True)
    cards.write(tmp_path, card)
    assert "base_model" not in metadata_load(tmp_path / "README.md")  # the Hub refuses a path there
    assert "`artifacts/pretrain`, a local folder (not on the Hub)" in str(card)


def test_adapter_card_never_has_an_empty_base_model():
    card = cards.model_card(facts("lora"), "artifacts/lora/adapter", "apache-2.0", "en")
    assert card.data.base_model == "artifacts/pretrain" and card.data.library_name == "peft"
    assert {"lora", "peft"} <= set(card.data.tags)


def test_classifier_card_scores_are_test_accuracy_and_f1():
    card = cards.model_card(facts("classify", metrics={"test_accuracy": 0.95, "test_f1": 0.94}), "c", "apache-2.0", "en")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"accuracy": 0.95, "f1": 0.94}
    assert card.data.pipeline_tag == "text-classification"


def test_chat_usage_snippet_sends_messages_through_the_chat_template(tmp_path, tiny_model, tokenizer):
    from llmpipe.data import instructions

    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    chat = type(tokenizer).from_pretrained(tmp_path / "model")  # not the session's tokenizer
    chat.chat_template = instructions.CHAT_TEMPLATE
    chat.save_pretrained(tmp_path / "model")
    snippet = cards.usage("sft", str(tmp_path / "model"), "chat")
    assert "'role': 'user'" in snippet
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_a_card_names_the_architecture_it_was_made_from(model_type):
    card = cards.model_card(facts("sft", model_type=model_type), "alice/tiny-sft", "mit", "en")
    other = ({"gpt2", "llama"} - {model_type}).pop()
    assert model_type in card.data.tags and other not in card.data.tags
    assert f"an instruction-tuned `{model_type}` model" in card.text


def test_a_copied_tokenizer_says_so_and_lists_no_training_data():
    card = str(cards.model_card(facts("tokenizer", base_model="gpt2"), "t", "mit", "en"))
    assert "the tokenizer of gpt2, taken as is" in card and "Training data" not in card


def test_load_facts_names_a_folder_without_a_card(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path}/README.md: no model card"):
        cards.load_facts(tmp_path)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\nhello\n")
    with pytest.raises(UserError, match="no `llmpipe` metadata"):
        cards.load_facts(tmp_path)


def test_usage_snippet_runs_on_the_saved_folder(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    snippet = cards.usage("pretrain", str(tmp_path / "model"))
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Every effort moves you")


def test_card_facts_leave_timings_out_so_a_rerun_writes_the_same_card():
    from types import SimpleNamespace

    from llmpipe import params
    from llmpipe.stages.pretrain import PretrainRecipe
    from tests.conftest import REPO

    job = SimpleNamespace(params=params.load(REPO / "params.yaml"), recipe_path=REPO / "recipes/tiny/pretrain.yaml",
                          recipe=PretrainRecipe(training={"learning_rate": 0.003}))
    made = cards.facts(job, "pretrain", {**METRICS, "mfu": 0.55, "train_step_seconds": 150.0, "device_peak_source": "cpu"})
    assert made.metrics == {"val_loss": 4.25, "val_perplexity": 70.1, "initial_val_loss": 7.6}
    assert made.recipe == "tiny" and made.settings["training.learning_rate"] == 0.003
    assert made.data == ["data/text/tinyshakespeare.txt"]
