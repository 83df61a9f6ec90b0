"""The measures of an answer that the evaluate stage reports, computed one way for the evaluate and the
meta-evaluate stages alike, so the agreement the meta-evaluation finds is the agreement of what evaluate
reports:

- `judge`: the judge's 0-100 score under the book's protocol (its reading, judge/scoring.py);
- `judge_similarity`: the judge model's similarity of the answer to the reference (the `hf` backend's);
- `rouge_l`: word overlap with the reference (0-1);
- `judge_combined`: the meta-evaluation's fitted combination of the others (an estimate of GPT-4's 0-100 score).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LinearRegression

from llmpipe.errors import UserError
from llmpipe.metrics.agreement import agreement

# a judge backend's other signals, by the key its verdicts' detail holds them under -> the measure's name
SIGNALS = {"similarity": "judge_similarity"}
COMBINED = "judge_combined"
MINIMUM_FIT = 10  # fewer development answers with every feature than this fit no combination
# a measure whose Spearman with GPT-4 on the development half is below this only adds noise to a fit on 100
# answers (SmolLM2's own 0-100 score: 0.19; with it the fit's development Spearman fell from 0.85 to 0.73)
FEATURE_FLOOR = 0.3


def of_answers(verdicts: dict | None, overlap: list[float]) -> dict[str, list[float | None]]:
    """Per measure, one value per answer, from the judge module's `scores` and `details` (None: no judge)
    and each answer's ROUGE-L. A judge's answer that was not a score is None, kept in place."""
    found = {}
    if verdicts is not None:
        found["judge"] = list(verdicts["scores"])
        for key, name in SIGNALS.items():
            if verdicts["details"] and all(key in detail for detail in verdicts["details"]):
                found[name] = [detail[key] for detail in verdicts["details"]]
    return found | {"rouge_l": list(overlap)}


@dataclass
class Combination:
    """A linear regression of GPT-4's score on a few measures: a handful of global parameters, nothing per
    instruction. Its output is clipped to GPT-4's 0-100 range."""

    features: list[str]
    intercept: float
    coefficients: list[float]
    judge: str  # the judge whose signals it combines: another judge needs its own fit
    fitted_on: str

    def __call__(self, measures: dict[str, list[float | None]]) -> list[float | None]:
        rows = zip(*(measures[name] for name in self.features))
        return [None if None in row else float(np.clip(self.intercept + np.dot(self.coefficients, row), 0, 100)) for row in rows]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def fit(measures: dict[str, list[float | None]], gold: list[int], judge: str, fitted_on: str) -> Combination | None:
    """The combination of the measures that agree with GPT-4 at all (`FEATURE_FLOOR`), fitted on these answers
    only (the development half); None when no judge signal is among them or too few answers have every feature."""
    features = [name for name in measures
                if name != COMBINED and (agreement(measures[name], gold)["spearman"] or 0.0) >= FEATURE_FLOOR]
    if not any(name != "rouge_l" for name in features):  # nothing of the judge to combine
        return None
    rows = [(row, g) for *row, g in zip(*(measures[name] for name in features), gold) if None not in row]
    if len(rows) < MINIMUM_FIT:
        return None
    x, y = np.array([row for row, _ in rows], dtype=float), np.array([g for _, g in rows], dtype=float)
    model = LinearRegression().fit(x, y)
    return Combination(features, round(float(model.intercept_), 6), [round(float(c), 6) for c in model.coef_], judge, fitted_on)


def load_combination(path: Path) -> Combination | None:
    """The meta-evaluate stage's fitted combination (None where it fitted none)."""
    if not path.is_file():
        return None
    try:
        return Combination(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as err:
        raise UserError(f"{path}: not a combination the meta-evaluate stage writes ({err}); run `llmpipe meta-evaluate` again") from None


MEANINGS = {
    COMBINED: "the meta-evaluation's fit of GPT-4's 0-100 score on the judge's signals and ROUGE-L",
    "judge_similarity": "the judge model's similarity of the answer to the reference (cosine of their mean hidden states)",
    "rouge_l": "word overlap with the reference (ROUGE-L F1, 0 to 1)",
}


def _agreement_words(name: str, agreement: dict[str, dict], headline: str | None) -> str:
    spearman = agreement.get(name, {}).get("held-out", {}).get("spearman")
    if spearman is None:
        return " Its agreement with GPT-4 is not measured for this judge."
    lead = " This evaluation leads with it: it agrees best with GPT-4" if name == headline else " It agrees with GPT-4"
    return f"{lead} on the book's held-out rated answers at Spearman {spearman:.2f}."


def judge_words(score: float | None, detail: dict, judge: str) -> str:
    """The judge's verdict in words: what it scored, and how sure it was."""
    if score is None:
        return f"The judge ({judge}) answered {detail.get('answer')!r}, which is not a score 0-100; it counts as unscored."
    if "p_mode" not in detail:
        return f"The judge ({judge}) answered {score:.0f} of 100."
    return (f"The judge ({judge}) scores it {score:.1f} of 100: the expectation of its answer, whose most likely value is "
            f"{detail['mode']} (probability {detail['p_mode']:.0%}); it put {detail['mass_on_scores']:.1%} of its "
            "probability on answering with a number at all.")


def feedback(row: dict, judge: str, headline: str | None, agreement: dict[str, dict]) -> list[dict]:
    """One judged answer's measures as MLflow feedback (name, value rounded, rationale in words): the headline
    measure first, then the judge's score, then the rest."""
    names = [name for name in MEANINGS if name in row]
    names.sort(key=lambda name: name != headline)
    score = row["judge_score"]
    judged = {"name": "judge_score", "value": None if score is None else round(score, 1),
              "rationale": judge_words(score, row["judge_detail"], judge) + _agreement_words("judge", agreement, headline),
              "error": None if score is not None else "the judge's answer is not a score"}
    found = [{"name": name, "value": None if row[name] is None else round(row[name], 2),
              "rationale": f"{row[name]:.2f}: {MEANINGS[name]}." + _agreement_words(name, agreement, headline) if row[name] is not None
              else f"not measured: {MEANINGS[name]} needs every feature", "error": None} for name in names]
    at = 1 if found and headline == found[0]["name"] else 0
    return found[:at] + [judged] + found[at:]
