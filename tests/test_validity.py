import pytest

from llmpipe.metrics.validity import measure, mismatched


def test_every_example_gets_another_examples_reference_fixed_by_the_seed():
    references = [f"answer {i}" for i in range(20)]
    wrong = mismatched(references, seed=123)
    assert sorted(wrong) == sorted(references)
    assert all(w != r for w, r in zip(wrong, references))
    assert wrong == mismatched(references, seed=123) != mismatched(references, seed=1)


def test_auc_win_rate_and_length_bias_from_paired_scores_and_their_mirror_when_the_judge_inverts_them():
    right, wrong = [80.0, 70.0, 90.0], [20.0, 75.0, 10.0]
    answers = ["a", "a b", "a b c", "a b c d"]
    found = measure(right, wrong, [10.0, 20.0, 30.0, 40.0], answers)
    assert found["auc"] == pytest.approx(8 / 9, abs=1e-4) and found["win_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert found["length_bias"] == 1.0  # the longer the answer, the higher the score
    assert found["reference_mean"] == 80.0 and found["mismatched_mean"] == 35.0 and found["pairs"] == 3
    inverted = measure(wrong, right, [40.0, 30.0, 20.0, 10.0], answers)
    assert inverted["auc"] == pytest.approx(1 / 9, abs=1e-4) and inverted["length_bias"] == -1.0
    assert measure([50.0, 50.0], [50.0, 50.0], [1.0, 1.0], ["a", "b c"])["win_rate"] == 0.5  # ties count half
