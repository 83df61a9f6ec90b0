import pytest

from llmpipe import cli
from llmpipe.data import instructions
from llmpipe.stages.evaluate import Bootstrap, confidence_interval, summarize
from tests.conftest import assert_refused, copy_repo


def row(score, response="an answer", **detail) -> dict:
    return {"response": response, "judge_score": score, "judge_detail": detail}


def test_summary_counts_unscored_examples_and_averages_the_rest():
    rows = [row(80), row(None, answer="Score: 9"), row(60), row(None, answer="great")]
    values = {"judge": [80, None, 60, None], "rouge_l": [0.5, 0.0, 0.25, 0.25]}
    summary = summarize(rows, values, None, settings=Bootstrap(resamples=200))
    assert summary["examples"] == 4 and summary["unscored"] == 2
    assert summary["judge_mean"] == 70
    assert summary["judge_ci_low"] <= 70 <= summary["judge_ci_high"]
    assert summary["response_words"] == 2 and summary["rouge_l_mean"] == 0.25
    assert "judge_confidence" not in summary and "headline" not in summary  # only the hf judge reports one


def test_summary_leads_with_the_headline_measure_and_keeps_the_others():
    rows = [row(50.0, p_mode=0.5, mass_on_scores=0.1), row(70.0, p_mode=0.9, mass_on_scores=0.3)]
    values = {"judge": [50.0, 70.0], "rouge_l": [0.2, 0.4], "judge_combined": [30.0, 50.0]}
    summary = summarize(rows, values, "judge_combined", Bootstrap(resamples=200))
    assert list(summary)[:4] == ["headline", "headline_mean", "headline_ci_low", "headline_ci_high"]
    assert summary["headline"] == "judge_combined" and summary["headline_mean"] == summary["judge_combined_mean"] == 40
    assert summary["judge_mean"] == 60 and summary["rouge_l_mean"] == pytest.approx(0.3)
    assert summary["judge_confidence"] == pytest.approx(0.7)
    assert summary["judge_mass_on_scores"] == pytest.approx(0.2)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_examples():
    settings = Bootstrap(resamples=500, seed=1)
    few = [10.0, 90.0, 40.0, 70.0]
    low, high = confidence_interval(few, settings)
    assert low < sum(few) / 4 < high
    many_low, many_high = confidence_interval(few * 25, settings)
    assert many_high - many_low < high - low
    assert confidence_interval([5.0], settings) == (5.0, 5.0)
    assert confidence_interval([], settings) == (None, None)


def test_judge_request_is_the_books_format_input():
    entry = {"instruction": "Rewrite the sentence.", "input": "It is fast.", "output": "It is quick."}
    assert instructions.request(entry) == (
        f"{instructions.ALPACA_PREAMBLE}\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\nIt is fast."
    )
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    assert instructions.request(chat) == "system: Be brief.\n\nuser: Hi"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = copy_repo(tmp_path_factory.mktemp("evaluate") / "project")
    (project / "metrics/evaluate.json").unlink(missing_ok=True)
    return project


@pytest.mark.parametrize(
    "setting, message",
    [
        ("judge.backnd=hf", "unknown key `judge.backnd`; did you mean `judge.backend`?"),
        ("judge.backend=ollama", "`judge.backend` must be one of 'hf', 'openai'"),
        ("models={}", "`models` is empty"),
    ],
)
def test_bad_recipe_values_are_named(project, setting, message, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert_refused(cli.main(["evaluate", "--set", setting]), capsys.readouterr().err, message)
    assert not (project / "artifacts/evaluate").exists() and not (project / "metrics/evaluate.json").exists()


def test_a_split_without_test_part_is_named(tmp_path, monkeypatch, capsys):
    project = copy_repo(tmp_path / "project")  # its own copy: the split it breaks is shared by three stages
    (project / "recipes/tiny/instructions.yaml").write_text("split: {train: 0.9, validation: 0.1}\n")
    monkeypatch.chdir(project)
    assert_refused(cli.main(["evaluate"]), capsys.readouterr().err, "recipes/tiny/instructions.yaml: `split` needs train, validation and test")


def test_evaluate_needs_the_meta_evaluation_it_leads_by(project, tiny_model, tokenizer, monkeypatch, capsys):
    model = project / "tiny-model"  # a loadable model and judge, so that the missing meta-evaluation is the first fault
    tiny_model.save_pretrained(model)
    tokenizer.save_pretrained(model)
    monkeypatch.chdir(project)
    settings = ["--set", f"models={{sft: {model}}}", "--set", f"judge.model={model}"]
    assert_refused(cli.main(["evaluate", *settings, "--meta-evaluation", "nowhere"]), capsys.readouterr().err,
                   "nowhere/agreement.json: no such file; run `llmpipe meta-evaluate`")
