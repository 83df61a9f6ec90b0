"""`llmpipe app`: the prompt and response logic on its own, then the app as users reach it, served in-process on
127.0.0.1 over tiny models laid out as the pipeline writes them: through gradio_client, and once in a real
browser that must never reach past this machine."""

import copy
import re
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import GPT2LMHeadModel

from llmpipe import artifacts, cli
from llmpipe.app import chat, classify, compare
from llmpipe.app.models import Models, load_language_model
from llmpipe.data import instructions, spam
from llmpipe.errors import UserError
from llmpipe.generation import Decoding
from tests.conftest import REPO, assert_refused

ASKED = "Name the colours of the sky and the grass."
ANSWER = "The sky is blue and the grass is green, as they always were."
CHROMIUM = Path("/usr/bin/chromium")


def taught(tiny_model, tokenizer) -> GPT2LMHeadModel:
    """The tiny model trained on one Alpaca example until it answers it and stops with EOS: an sft model
    in miniature, whose answer to ASKED is known."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_model.config)
    text = instructions.alpaca_prompt({"instruction": ASKED}) + ANSWER + tokenizer.eos_token
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    return model.eval()


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def written(tiny_model, tokenizer, tmp_path_factory) -> Path:
    """An artifacts folder as the stages write it: sft, pretrain, classify, a prompt-tuning adapter alone in
    adaptation/, the judge; no lora (a recipe that has not run it)."""
    root = tmp_path_factory.mktemp("app") / "artifacts"
    save(taught(tiny_model, tokenizer), tokenizer, root / "sft")
    save(tiny_model, tokenizer, root / "pretrain")
    save(tiny_model, tokenizer, root / "judge")
    labels = artifacts.label_settings(spam.LABELS)
    classifier = artifacts.load_classifier(root / "pretrain", "classifier", **labels, pad_token_id=tokenizer.pad_token_id)
    save(classifier, tokenizer, root / "classify")
    base = artifacts.load_classifier(root / "pretrain", "classifier", **labels, pad_token_id=tokenizer.pad_token_id)
    adapter = get_peft_model(base, PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=4))
    save(adapter, tokenizer, root / "adaptation" / "prompt_tuning")
    return root


@pytest.fixture(scope="module")
def models(written) -> Models:
    return Models(written)  # the judge: written/judge


def test_models_are_named_by_stage_and_a_missing_one_says_which_stage_writes_it(models, written):
    assert [c.name for c in models.instruction_tuned] == ["sft", "lora (merged)"]  # no dpo folder: not offered
    assert [c.name for c in models.classifiers] == ["classify", "adaptation/prompt_tuning"]
    assert models.find(models.instruction_tuned, "lora (merged)").unavailable.startswith(f"no folder {written / 'lora/merged'}")
    assert "the lora stage writes it" in models.status("lora (merged)", "chat")


def test_dpo_is_offered_once_its_stage_wrote_a_folder(tmp_path):
    (tmp_path / "dpo").mkdir()
    assert [c.name for c in Models(tmp_path).instruction_tuned] == ["sft", "lora (merged)", "dpo"]


def test_an_unloadable_folder_is_unavailable_with_the_loaders_reason(written, tmp_path):
    weights = Path(shutil.copytree(written / "sft", tmp_path / "sft")) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    line = Models(tmp_path).status("sft", "chat")
    assert line.startswith("⚠️ sft is unavailable:") and "cannot load" in line and "Traceback" not in line


def test_an_alpaca_model_answers_one_message_and_stops_at_eos(models):
    sft = models.language_model("sft")
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}]
    assert chat.chat_prompt(sft, history, ASKED, 40) == instructions.alpaca_prompt({"instruction": ASKED})
    grown = list(chat.reply(sft, history, ASKED, Decoding(max_new_tokens=60)))
    assert len(grown) > 3 and all(later.startswith(earlier.rstrip()) for earlier, later in zip(grown, grown[1:]))
    assert grown[-1] == ANSWER  # all of it, then EOS: not 60 tokens


def test_a_chat_template_model_sees_the_turns_that_fit_its_context(tiny_model, tokenizer, tmp_path):
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = instructions.CHAT_TEMPLATE
    lm = load_language_model(str(save(tiny_model, templated, tmp_path / "chat")))
    assert lm.multi_turn
    history = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"}]
    prompt = chat.chat_prompt(lm, history, "second question", 40)
    assert prompt.index("first question") < prompt.index("first answer") < prompt.index("second question")
    long = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "word " * 40}]
    squeezed = chat.chat_prompt(lm, long + history, "second question", 40)
    assert squeezed.startswith("<|user|>\nfirst question")  # the oldest exchange dropped to leave room for 40 tokens


def test_decoding_controls_follow_generates_rules_named_by_label():
    from llmpipe.app.chat import LABELS, decoding

    assert decoding(10, 0.7, 5, None, 1) == Decoding(10, 0.7, 5, None, 1)
    with pytest.raises(UserError, match="^top-p: must be in"):
        decoding(10, 1.0, None, 1.5, 1)
    with pytest.raises(UserError, match="^top-k filters sampling, and temperature 0 decodes greedily"):
        decoding(10, 0.0, 5, None, 1)
    assert set(LABELS) == {"max_new_tokens", "temperature", "top_k", "top_p", "seed"}


def test_classifiers_give_both_probabilities_adapter_alone_too(models):
    for name in ("classify", "adaptation/prompt_tuning"):
        probabilities = classify.probabilities(models.classifier(name), "WINNER! Claim your prize now")
        assert set(probabilities) == {"ham", "spam"} and sum(probabilities.values()) == pytest.approx(1)
    with pytest.raises(UserError, match="empty"):
        classify.probabilities(models.classifier("classify"), " ")


def test_compare_answers_as_evaluate_does_and_scores_against_the_reference(models):
    asked = compare.entry(ASKED, reference=ANSWER)
    answers = [compare.answer(models.language_model(name), asked, Decoding(40)) for name in ("sft", "pretrain")]
    assert answers[0] == ANSWER
    scored = compare.scores(models.judge(), asked, answers)
    assert scored.rouge_l[0] == pytest.approx(1.0) and scored.rouge_l[1] < 1
    assert all(0 <= score <= 100 for score in scored.judge)


@pytest.fixture(scope="module")
def looked_up() -> list[str]:
    """Every host name this process looks up while the app serves (the app's own side of "nothing leaves")."""
    return []


@pytest.fixture(scope="module")
def served(models, looked_up):
    from llmpipe.app import ui

    lookup = socket.getaddrinfo

    def recorded(host, *args, **kwargs):
        looked_up.append(host)
        return lookup(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", recorded)
        page, url = ui.launch(models, "127.0.0.1", None)
        yield url
        page.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served, verbose=False)


def test_the_app_listens_on_localhost_only(served):
    port = urlsplit(served).port
    listening = [c.laddr.ip for c in psutil.Process().net_connections() if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]


def test_the_command_without_any_model_says_to_run_the_pipeline(tmp_path, capsys):
    assert_refused(cli.main(["app", "--artifacts", str(tmp_path)]), capsys.readouterr().err,
                   f"{tmp_path}: no model the pipeline writes is there; run `make repro` first")


def test_chat_streams_the_answer_and_ends_at_eos(client):
    job = client.submit(ASKED, "sft", 60, 0.0, None, None, 123, api_name="/chat")
    updates = list(job)
    assert len(updates) > 3 and updates[-1] == ANSWER


def test_a_bad_setting_comes_back_as_its_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="top-k filters sampling"):
        client.predict(ASKED, "sft", 60, 0.0, 5, None, 123, api_name="/chat")
    with pytest.raises(AppError, match="lora \\(merged\\) is unavailable: no folder"):
        client.predict(ASKED, "lora (merged)", 60, 0.0, None, None, 123, api_name="/chat")


def test_classify_returns_both_labels(client):
    result = client.predict("adaptation/prompt_tuning", "Free entry! Win cash now", api_name="/classify")
    assert {c["label"] for c in result["confidences"]} == {"ham", "spam"}


def test_compare_returns_two_scored_answers(client):
    first, first_score, second, second_score, judge = client.predict(ASKED, "", ANSWER, "sft", "pretrain", 40, api_name="/compare")
    assert first == ANSWER and second != ANSWER
    assert "ROUGE-L **1.000**" in first_score and "judge **" in second_score and "judge" in judge.lower()


def test_generate_continues_the_prompt(client):
    assert client.predict("pretrain", "I had", 8, 0.0, None, None, 123, api_name="/generate").startswith("I had")


# every text the last answer bubble shows, as the page renders it
RECORD_ANSWERS = """() => {
    window.shownAnswers = [];
    new MutationObserver(() => {
        const bubbles = document.querySelectorAll(".message.bot");
        const text = bubbles.length ? bubbles[bubbles.length - 1].innerText.trim() : "";
        if (text && text !== window.shownAnswers.at(-1)) window.shownAnswers.push(text);
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)")
def test_in_a_browser_the_chat_streams_and_no_request_leaves_the_machine(served):
    from playwright.sync_api import sync_playwright

    outside = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()

            def guard(route):
                if urlsplit(route.request.url).hostname != "127.0.0.1":
                    outside.append(route.request.url)
                    return route.abort()
                return route.continue_()

            page.route("**/*", guard)
            page.goto(served)
            page.evaluate(RECORD_ANSWERS)
            page.locator("#chat-input textarea").fill(ASKED)
            page.locator("#chat-input textarea").press("Enter")
            page.wait_for_function(f"window.shownAnswers.some(text => text.includes({ANSWER!r}))", timeout=60_000)
            shown = page.evaluate("window.shownAnswers")
            page.evaluate("fetch('https://example.com/').catch(() => null)")  # the guard's own check: it must catch this
            page.wait_for_timeout(500)
        finally:
            browser.close()
    assert shown[-1] == ANSWER and len([text for text in shown if ANSWER.startswith(text)]) > 2  # shown growing, then whole
    assert outside == ["https://example.com/"], f"requests left 127.0.0.1: {outside[:-1]}"


def test_only_the_ui_module_imports_gradio():
    importing = sorted(str(path.relative_to(REPO)) for path in (REPO / "llmpipe").rglob("*.py")
                       if re.search(r"^\s*(import|from) gradio", path.read_text(encoding="utf-8"), re.MULTILINE))
    assert importing == ["llmpipe/app/ui.py"]


def test_the_app_looked_up_no_name_beyond_this_machine(served, client, looked_up):
    """Run last: after every request above. With Gradio's defaults, launching looks up api.gradio.app
    (analytics); the app turns that off."""
    assert set(looked_up) <= {"127.0.0.1", "localhost"}, looked_up
