"""Model-judged score (the book's ch7.8 protocol) of each prediction, 0 to 100, against its reference.

    judge = evaluate.load("<llmpipe>/metrics/judge")
    judge.compute(predictions=[...], references=[...], requests=[...], backend="hf", model="Qwen/Qwen2.5-1.5B-Instruct")

Any `llmpipe.judge.JudgeSettings` field can be passed to `compute`; or pass `judge=` a judge already loaded.
"""

import datasets
import evaluate
from tqdm.auto import tqdm

from llmpipe.judge.backends import load
from llmpipe.judge.base import JudgeSettings

_INPUTS = """
Args:
    predictions: the model's responses.
    references: the correct outputs.
    requests: the instructions (with their input) the responses answer.
    judge: a loaded judge (llmpipe.judge.load); otherwise built from the settings below.
    **settings: llmpipe.judge.JudgeSettings fields: backend ("hf" or "openai"), model, base_url, ...
Returns:
    judge: the judge's identity; scores: one per example (None: the answer was not a score);
    details: what the judge answered (hf: distribution summary; openai: the raw answer);
    mean: mean of the scores; unscored: how many examples got no score.
"""


class Judge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="A judge model's 0-100 score of each response given the instruction and the reference.",
            citation="Raschka, 2024. Build a Large Language Model (From Scratch), ch. 7.8.",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "requests": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, requests, judge=None, **settings):
        judge = judge or load(JudgeSettings(**settings))
        examples = list(zip(requests, references, predictions))
        if hasattr(judge, "judge_many"):  # the hf judge: batched, on shared prompt beginnings
            verdicts = judge.judge_many(examples)
        else:
            verdicts = [judge(*example) for example in tqdm(examples, desc=f"judging ({judge.identity})", unit="example")]
        scores = [v.score for v in verdicts]
        scored = [s for s in scores if s is not None]
        return {
            "judge": judge.identity,
            "scores": scores,
            "details": [v.detail for v in verdicts],
            "mean": sum(scored) / len(scored) if scored else None,
            "unscored": len(scores) - len(scored),
        }
