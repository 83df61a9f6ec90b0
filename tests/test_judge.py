import copy
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from llmpipe.data import instructions
from llmpipe.errors import UserError
from llmpipe.judge.backends import load
from llmpipe.judge.base import SCORES, JudgeSettings
from llmpipe.judge.hf import HfJudge, verdict
from llmpipe.judge.openai import parse_score
from llmpipe.judge.scoring import candidate_log_probs, longer_score_may_follow, score_trie, starting_with_digit, trie
from llmpipe.metrics import evaluate_modules
from tests.conftest import REPO

WORDS = ["<|endoftext|>", "[UNK]", *map(str, SCORES), "great", "answer", "score"]


def judge_that_says(word: str, folder: Path, n_positions: int = 512) -> Path:
    """A tiny GPT-2 whose next token is always `word`: its final LayerNorm outputs a constant vector
    that only `word`'s (tied) embedding points along. Saved with a word-level tokenizer and a chat template."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=WORDS[0], unk_token="[UNK]", pad_token=WORDS[0])
    tokenizer.chat_template = instructions.CHAT_TEMPLATE
    config = GPT2Config(vocab_size=len(WORDS), n_positions=n_positions, n_embd=16, n_layer=1, n_head=2, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 10.0
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[vocab[word], 0] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- the hf backend: an expectation over the allowed scores ---------------------------------------


@pytest.mark.parametrize("favoured, low, high", [("100", 99.0, 100.0), ("0", 0.0, 1.0), ("63", 62.0, 64.0)])
def test_hf_judge_scores_what_its_logits_favour(tmp_path, favoured, low, high):
    judge = load(JudgeSettings(backend="hf", model=str(judge_that_says(favoured, tmp_path))))
    result = judge("Name a colour.", "Blue.", "Red.")
    assert low <= result.score <= high
    assert result.detail["mode"] == int(favoured)
    assert result.detail["p_mode"] > 0.9


def test_hf_verdict_is_a_proper_expectation():
    torch.manual_seed(1)
    log_probs = torch.randn(len(SCORES)) * 3 - 20  # unnormalised, as read from a model
    result = verdict(log_probs)
    probs = torch.softmax(log_probs.double(), 0)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)
    assert result.score == pytest.approx(float((probs * torch.arange(101, dtype=torch.float64)).sum()), abs=1e-3)
    assert result.detail["mass_on_scores"] == pytest.approx(float(log_probs.double().exp().sum()), rel=1e-9)
    assert 0 <= result.score <= 100


@pytest.mark.parametrize("reading", ["first_number", "exact"])
def test_packed_scoring_gives_what_plain_forward_passes_give(tiny_model, tokenizer, reading):
    """Two prompts packed on their shared beginning, each with its copy of the trie, give every score's
    log-probability as a plain forward pass over the prompt and the score's tokens reads it."""
    prompts = [tuple(tokenizer(f"Score the answer {answer} from 0 to 100:")["input_ids"]) for answer in ("yes", "no way")]
    digit = starting_with_digit(tokenizer, tiny_model.config.vocab_size) if reading == "first_number" else None
    packed = candidate_log_probs(tiny_model, prompts, score_trie(tokenizer, SCORES, reading), digit)
    begins_with_digit = torch.tensor([tokenizer.decode([i])[:1].isdigit() for i in range(len(tokenizer))])
    assert len({len(tokenizer(str(s), add_special_tokens=False)["input_ids"]) for s in SCORES}) > 1  # uneven splits
    for row, prompt in enumerate(prompts):
        for score in (0, 7, 10, 42, 100):
            tokens = tokenizer(str(score), add_special_tokens=False)["input_ids"]
            tokens += [tokenizer.eos_token_id] if reading == "exact" else []
            with torch.inference_mode():
                log_probs = torch.log_softmax(tiny_model(torch.tensor([list(prompt) + tokens])).logits[0].float(), -1)
            expected = sum(float(log_probs[len(prompt) - 1 + i, token]) for i, token in enumerate(tokens))
            if reading == "first_number" and 1 <= score <= 10:  # a longer score could follow: no digit next
                expected += math.log(1 - float(log_probs[-1, begins_with_digit].exp().sum()))
            assert float(packed[row, score]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("chat", [False, True])
def test_batched_judge_gives_the_one_at_a_time_verdicts(tmp_path, tokenizer, chat):
    """Shared prompt beginnings, the candidate trie and repeated prompts change nothing but the speed."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer = copy.deepcopy(tokenizer)  # the session's tokenizer stays as other tests expect it
    tokenizer.chat_template = instructions.CHAT_TEMPLATE if chat else None
    tokenizer.save_pretrained(tmp_path)
    judge = HfJudge(JudgeSettings(model=str(tmp_path)), batch_size=3)
    request = instructions.request({"instruction": "Give a synonym for 'happy'.", "input": "", "output": ""})
    examples = [(request, "Joyful.", answer) for answer in ("Joyful.", "Sad.", "The sun is a star " * 6, "Joyful.", "Glad.")]
    examples += [(instructions.request({"instruction": "Add 2 and 3.", "input": "", "output": ""}), "5", "Five, since 2 + 3 = 5.")]
    batched = judge.judge_many(examples)
    for example, many in zip(examples, batched):
        one = judge(*example)
        assert many.score == pytest.approx(one.score, abs=1e-4)
        assert many.detail["mass_on_scores"] == pytest.approx(one.detail["mass_on_scores"], rel=1e-4)
        assert many.detail["mode"] == one.detail["mode"]


def test_score_trie_feeds_each_node_once_and_reads_an_end_only_where_a_longer_score_could_follow():
    digits = [[int(d) for d in str(score)] for score in SCORES]  # digits are tokens 0-9, EOS is 10
    exact = trie([d + [10] for d in digits], [False] * len(digits))
    assert len(exact.tokens) == 10 + 90 + 1  # "0".."9", "10".."99", "100"
    extended = longer_score_may_follow(SCORES)
    assert [s for s, read in zip(SCORES, extended) if read] == list(range(1, 11))
    first = trie(digits, extended)
    node = {tuple(int(t) for t in first.tokens[first.sees[k]]): k + 1 for k in range(len(first.tokens))}
    assert set(node) == {(d,) for d in range(1, 10)} | {(1, 0)}  # "1".."9" and "10": 10 nodes, not 101
    assert first.steps[42][first.steps_real[42]].tolist() == [0, node[(4,)]]
    assert not first.ends_read[42] and first.ends_read[5] and first.ends[5] == node[(5,)]
    assert first.steps[100].tolist() == [0, node[(1,)], node[(1, 0)]] and first.ends[10] == node[(1, 0)]


def test_hf_judge_keeps_the_end_of_a_prompt_too_long_for_its_context(tmp_path):
    judge = HfJudge(JudgeSettings(model=str(judge_that_says("50", tmp_path, n_positions=64))))
    result = judge("word " * 200, "reference", "response")
    assert result.detail["prompt_tokens_dropped"] > 0
    assert 49 <= result.score <= 51


def test_judge_is_an_evaluate_module(tmp_path):
    judged = evaluate_modules.load("judge").compute(
        predictions=["Red.", "Blue."], references=["Blue.", "Blue."], requests=["Name a colour."] * 2,
        backend="hf", model=str(judge_that_says("100", tmp_path)),
    )
    assert judged["judge"] == f"hf:{tmp_path} (reading: first_number)"
    assert len(judged["scores"]) == 2 and judged["unscored"] == 0
    assert judged["mean"] > 99


# --- the openai backend, against a real `transformers serve` -------------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [("42", 42), (" 7\n", 7), ("100", 100), ("0", 0), ("101", None), ("-3", None), ("42 42", None),
     ("Score: 5", None), ("4.5", None), ("", None), (None, None)],
)
def test_scores_are_parsed_strictly(answer, expected):
    assert parse_score(answer) == expected


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, packaged_judge):
    """`transformers serve` on 127.0.0.1 with two judges the test built (one answers 42, one "great") and the
    pipeline's real judge, SmolLM2-135M-Instruct."""
    folder = tmp_path_factory.mktemp("served")
    judges = {word: str(judge_that_says(word, folder / word)) for word in ("42", "great")}
    judges["smollm2"] = str(packaged_judge)
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ, "HF_HOME": str(folder / "hf")})
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            assert server.poll() is None, "transformers serve exited"
            try:
                urllib.request.urlopen(f"{base_url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not become ready in 60 s")
        yield f"{base_url}/v1", judges
    finally:
        server.terminate()
        server.wait(timeout=30)


def openai_judge(base_url: str, model: str, **settings) -> dict:
    return evaluate_modules.load("judge").compute(
        predictions=["Red.", "Blue."], references=["Blue.", "Blue."], requests=["Name a colour."] * 2,
        backend="openai", base_url=base_url, model=model, **{"max_retries": 0, **settings},
    )


@pytest.mark.slow
def test_openai_judge_reads_the_integer_the_endpoint_answers(served):
    base_url, judges = served
    judged = openai_judge(base_url, judges["42"], max_tokens=1)
    assert judged["scores"] == [42, 42]
    assert judged["mean"] == 42 and judged["unscored"] == 0
    assert judged["judge"] == f"openai:{judges['42']}@{base_url}/"


@pytest.mark.slow
def test_openai_judge_keeps_and_counts_answers_that_are_not_integers(served):
    base_url, judges = served
    judged = openai_judge(base_url, judges["great"], max_tokens=1)
    assert judged["scores"] == [None, None]
    assert judged["unscored"] == 2 and judged["mean"] is None
    assert [d["answer"] for d in judged["details"]] == ["great", "great"]
    longer = openai_judge(base_url, judges["42"], max_tokens=3)  # "42 42 42": not an integer alone
    assert longer["unscored"] == 2


@pytest.mark.slow
def test_openai_judge_with_a_real_instruct_model_counts_the_answers_it_cannot_parse(served):
    """The book's failure mode with Ollama: a free-text answer that is not an integer 0-100. Kept and counted."""
    base_url, judges = served
    entries = json.loads((REPO / "data" / "instruction-data.json").read_text())[:6]
    judged = evaluate_modules.load("judge").compute(
        predictions=[instructions.reference(e) for e in entries], references=[instructions.reference(e) for e in entries],
        requests=[instructions.request(e) for e in entries], backend="openai", base_url=base_url, model=judges["smollm2"],
        max_retries=0, max_tokens=8,
    )
    answers = [detail["answer"] for detail in judged["details"]]
    assert len(answers) == 6 and all(answers)  # every answer kept, parsed or not
    assert judged["scores"] == [parse_score(answer) for answer in answers]
    parsed = sum(score is not None for score in judged["scores"])
    assert judged["unscored"] == 6 - parsed
    print(f"\nSmolLM2-135M-Instruct through transformers serve: {parsed}/6 answers parse as an integer 0-100: "
          f"{[d['answer'] for d in judged['details']]}")


@pytest.mark.slow
def test_openai_judge_names_the_endpoint_when_it_errors(served):
    base_url, _ = served
    with pytest.raises(UserError, match=r"answered HTTP 500 for model `no/such-model`"):
        openai_judge(base_url, "no/such-model")


def test_openai_judge_names_the_endpoint_when_nothing_listens():
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError, match=rf"judge endpoint {base_url}/ did not answer .* after 1 retries"):
        openai_judge(base_url, "llama3", max_retries=1)


@pytest.mark.slow
@pytest.mark.parametrize("word", ["42", "great"])
def test_an_openai_judge_is_meta_evaluated_for_what_it_gives(served, tmp_path, word):
    """The meta-evaluation of an endpoint's judge: its parsed scores and ROUGE-L, unparseable answers counted;
    a judge that scores none of the answers is reported as such, with no correlation of nothing."""
    from llmpipe.data import ratings
    from llmpipe.stages import meta_evaluate
    from tests.test_meta_evaluate import rated_folder

    base_url, judges = served
    halves = ratings.load(rated_folder(tmp_path, count=3))
    judge = load(JudgeSettings(backend="openai", base_url=base_url, model=judges[word], max_retries=0, max_tokens=1))
    found = meta_evaluate.measured(judge, halves)
    assert set(found["development"]) == {"judge", "rouge_l"}  # an endpoint gives no hidden states
    table = meta_evaluate.agreements(found, halves)
    held_out = table["judge"]["held-out"]
    if word == "42":
        assert held_out["scored"] == 3 and held_out["spearman"] is None  # one score for every answer ranks nothing
    else:
        assert held_out == {"scored": 0, "unscored": 3, "spearman": None, "kendall": None, "auc": None}
        assert "judge scored none of the answers" in meta_evaluate.describe_agreement(table, {"development": {"spearman": None}})
