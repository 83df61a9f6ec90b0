import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llmpipe import cli
from llmpipe.data import ratings
from llmpipe.errors import UserError
from llmpipe.metrics import measures
from llmpipe.metrics.agreement import agreement, pairwise_accuracy
from tests.conftest import REPO, assert_refused, copy_repo

GOLD = [10, 95, 40, 85, 60, 100, 0, 80]


def test_a_measure_equal_to_the_gold_agrees_fully_and_a_reversed_one_fully_disagrees():
    same = agreement([float(g) for g in GOLD], GOLD)
    assert same["spearman"] == same["kendall"] == same["auc"] == 1.0
    reversed_ = agreement([-float(g) for g in GOLD], GOLD)
    assert reversed_["spearman"] == reversed_["kendall"] == -1.0 and reversed_["auc"] == 0.0
    assert same["scored"] == len(GOLD) and same["unscored"] == 0


def test_unscored_answers_are_left_out_and_counted_and_none_scored_gives_no_figures():
    partly = agreement([None, 95.0, 40.0, None, 60.0, 100.0, 0.0, 80.0], GOLD)
    assert partly["scored"] == 6 and partly["unscored"] == 2 and partly["spearman"] == 1.0
    nothing = agreement([None] * len(GOLD), GOLD)
    assert nothing == {"scored": 0, "unscored": len(GOLD), "spearman": None, "kendall": None, "auc": None}


def test_pairwise_accuracy_counts_the_instructions_gold_orders_and_ties_half():
    gold_first, gold_second = [90, 50, 70, 30], [40, 80, 70, 60]  # the third pair is a gold tie: left out
    right = pairwise_accuracy([9.0, 1.0, 5.0, 2.0], [4.0, 8.0, 1.0, 6.0], gold_first, gold_second)
    assert right == {"pairwise_accuracy": 1.0, "pairs": 3}
    mixed = pairwise_accuracy([1.0, 1.0, 5.0, 7.0], [4.0, 1.0, 1.0, 6.0], gold_first, gold_second)
    assert mixed["pairwise_accuracy"] == pytest.approx((0 + 0.5 + 0) / 3, abs=1e-4)


def rated_folder(tmp_path: Path, count: int = 12) -> Path:
    """A hand-made ratings folder in the book's layout: `count` entries, GPT-4 and Llama 3 8B scores."""
    folder = tmp_path / "ratings"
    folder.mkdir()
    # words the tiny test judge knows (tests/test_judge.py WORDS): its hidden states tell them apart
    entries = [{"instruction": f"Name the number {i}.", "input": "", "output": f"great answer {i}",
                "model 1 response": f"great answer {i}" if i % 2 else "score",
                "model 2 response": f"answer {i}" if i % 3 else "score score"} for i in range(count)]
    (folder / ratings.EXAMPLES).write_text(json.dumps(entries))
    for model in (1, 2):
        scores = [95 if (i % 2 if model == 1 else i % 3) else 20 + i for i in range(count)]
        (folder / ratings.GOLD.format(model)).write_text(json.dumps(scores))
    (folder / ratings.BOOK_JUDGE).write_text(json.dumps([90 - i for i in range(count)]))
    return folder


@pytest.mark.parametrize(
    "file, content, culprit",
    [
        (ratings.GOLD.format(2), [50] * 11, "11 scores for 12 answers"),
        (ratings.GOLD.format(1), [50] * 11 + [101], "entry 11 is 101, outside 0-100"),
        (ratings.GOLD.format(1), [50] * 11 + [7.5], "entry 11 is 7.5, not an integer score"),
        (ratings.BOOK_JUDGE, {"scores": [50] * 12}, "expected a JSON list of integer scores 0-100, got dict"),
    ],
)
def test_a_ratings_file_that_does_not_line_up_is_refused_by_name(tmp_path, file, content, culprit):
    folder = rated_folder(tmp_path)
    (folder / file).write_text(json.dumps(content))
    with pytest.raises(UserError, match=rf"{folder / file}: .*{culprit}"):
        ratings.load(folder)


def test_the_shipped_ratings_line_up():
    halves = ratings.load(REPO / "data/judge-ratings")
    assert [len(half.gold) for half in halves.values()] == [100, 100]
    assert halves["development"].book_judge is not None and halves["held-out"].book_judge is None
    assert halves["development"].requests == halves["held-out"].requests


def test_the_combination_is_fitted_on_the_development_half_only():
    development = {"judge": [10.0, 50.0, 70.0, 20.0, 90.0, 40.0, 60.0, 30.0, 80.0, 55.0, 65.0, 15.0],
                   "rouge_l": [0.1, 0.5, 0.6, 0.3, 0.9, 0.2, 0.7, 0.2, 0.8, 0.4, 0.6, 0.1]}
    gold = [12, 48, 75, 25, 95, 35, 66, 28, 85, 50, 70, 10]
    combination = measures.fit(development, gold, "a judge", "the development half")
    held_out = {"judge": [5.0, 95.0], "rouge_l": [0.0, 1.0]}
    before = combination(held_out)
    assert all(0 <= value <= 100 for value in before) and before[0] < before[1]
    # the held-out answers play no part: the fit on the development half alone is the same fit
    assert measures.fit(development, gold, "a judge", "the development half") == combination
    assert measures.fit({"rouge_l": development["rouge_l"]}, gold, "a judge", "x") is None  # nothing of the judge
    noise = measures.fit(development | {"words": [5.0, 1, 7, 3, 2, 8, 4, 6, 1, 9, 2, 5]}, gold, "a judge", "x")
    assert noise.features == ["judge", "rouge_l"]  # a measure that does not track GPT-4 on this half is left out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("meta-evaluate") / "project")


def test_a_wrong_length_ratings_file_stops_the_stage_by_name(project, tmp_path, monkeypatch, capsys):
    folder = rated_folder(tmp_path)
    (folder / ratings.GOLD.format(2)).write_text(json.dumps([50] * 13))
    monkeypatch.chdir(project)
    assert_refused(cli.main(["meta-evaluate", "--ratings", str(folder)]), capsys.readouterr().err,
                   f"{folder / ratings.GOLD.format(2)}: 13 scores for 12 answers")
    assert not (project / "artifacts/meta-evaluate").exists()


def random_judge(folder: Path, tokenizer) -> Path:
    """A tiny GPT-2 with random weights: its scores mean nothing, but its hidden states tell texts apart."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_stage_measures_every_measure_and_fits_on_the_development_half_only(project, tokenizer, tmp_path, monkeypatch, capsys):
    """The stage end to end with a tiny judge on a hand-made ratings folder; then a held-out answer and its
    GPT-4 score change: the held-out figures move, the combination does not."""
    import yaml

    judge = random_judge(tmp_path / "judge", tokenizer)
    folder = rated_folder(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["mlflow"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(project)
    run = ["meta-evaluate", "--params", str(tmp_path / "params.yaml"), "--ratings", str(folder), "--set", f"judge.model={judge}"]
    assert cli.main(run) == 0
    metrics = json.loads((project / "metrics/meta-evaluate.json").read_text())
    assert set(metrics["measures"]) == {"judge", "judge_similarity", "rouge_l", measures.COMBINED}
    assert metrics["llama3_8b"]["held-out"] is None and metrics["llama3_8b"]["development"]["scored"] == 12
    assert metrics["headline"]["measure"] in metrics["measures"]
    combination = json.loads((project / "artifacts/meta-evaluate/combination.json").read_text())
    assert "judge_similarity" in combination["features"] and "development half" in combination["fitted_on"]
    assert combination["judge"] == f"hf:{judge} (reading: first_number)"
    assert len((project / "artifacts/meta-evaluate/scores.jsonl").read_text().splitlines()) == 24
    assert (project / "plots/meta-evaluate.png").stat().st_size > 0
    assert "Spearman with GPT-4 on the held-out half" in capsys.readouterr().out

    entries = json.loads((folder / ratings.EXAMPLES).read_text())
    entries[4]["model 2 response"] = "great answer 4"
    (folder / ratings.EXAMPLES).write_text(json.dumps(entries))
    held_out = json.loads((folder / ratings.GOLD.format(2)).read_text())
    (folder / ratings.GOLD.format(2)).write_text(json.dumps(held_out[:4] + [100] + held_out[5:]))
    assert cli.main(run) == 0
    again = json.loads((project / "metrics/meta-evaluate.json").read_text())
    assert again["measures"]["rouge_l"]["held-out"] != metrics["measures"]["rouge_l"]["held-out"]
    assert json.loads((project / "artifacts/meta-evaluate/combination.json").read_text()) == combination
