"""Stage `meta-evaluate`: how far to trust each measure the evaluate stage reports, against an outside
standard: the book's 200 judged answers (ch7.8, data/judge-ratings/), which GPT-4 scored 0-100.

The configured judge (the `judge` section of the evaluate recipe) scores them as evaluate scores the models'
answers, and every measure evaluate reports is set against GPT-4's scores: Spearman, Kendall, the AUC of
telling GPT-4's good answers (80 or more) from the rest, per half; pairwise accuracy over each instruction's
two answers. Model 1's answers are the development half: the combination of measures is fitted there and
nowhere else. Model 2's are held out: reported, never chosen by. Llama 3 8B, the book's judge, stands
beside them (development half only). The evaluate stage reads this stage's output folder: the combination
and the agreement that decides which measure it leads with."""

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmpipe.data import ratings
from llmpipe.judge import backends
from llmpipe.judge.base import JudgeSettings
from llmpipe.metrics import charts, evaluate_modules, measures
from llmpipe.metrics.agreement import agreement, pairwise_accuracy
from llmpipe.runtime import atomic
from llmpipe.stages import base

DEVELOPMENT, HELD_OUT = ratings.HALVES
BOOK_JUDGE = "llama3_8b"  # the book's judge, as the metrics name it
AGREEMENT, COMBINATION, SCORES = "agreement.json", "combination.json", "scores.jsonl"


@dataclass
class MetaEvaluateRecipe:
    judge: JudgeSettings = field(default_factory=JudgeSettings)  # the evaluate recipe's judge section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_common_arguments(parser, "meta-evaluate", MetaEvaluateRecipe, recipe_of="evaluate")
    parser.add_argument("--ratings", default="data/judge-ratings",
                        help="the book's judged examples and their GPT-4 and Llama 3 8B scores (default: %(default)s)")
    parser.add_argument("--output", default="artifacts/meta-evaluate",
                        help="folder to write: per-answer scores, the fitted combination, the agreement (default: %(default)s)")
    parser.add_argument("--figure", default="plots/meta-evaluate.png", help="figure to write (default: %(default)s)")


def measured(judge, halves: dict[str, ratings.RatedHalf]) -> dict[str, dict[str, list]]:
    """Per half, every measure of every answer; one judge call for both halves, so an instruction's two
    answers are scored on their shared prompt beginning."""
    answers = [(half, request, reference, response) for half, rated in halves.items()
               for request, reference, response in zip(rated.requests, rated.references, rated.responses)]
    _, requests, references, responses = map(list, zip(*answers))
    overlap = evaluate_modules.load("rouge_l").compute(predictions=responses, references=references)["rougeL_per_example"]
    verdicts = None
    if judge is not None:
        verdicts = evaluate_modules.load("judge").compute(predictions=responses, references=references, requests=requests, judge=judge)
    found, at = {}, 0
    for half, rated in halves.items():
        part = slice(at, at + len(rated.responses))
        at = part.stop
        own = None if verdicts is None else {key: verdicts[key][part] for key in ("scores", "details")}
        found[half] = measures.of_answers(own, overlap[part])
    return found


def agreements(found: dict[str, dict[str, list]], halves: dict[str, ratings.RatedHalf]) -> dict[str, dict]:
    """Per measure: its agreement with GPT-4 in each half, and over each instruction's pair of answers."""
    development, held_out = halves[DEVELOPMENT], halves[HELD_OUT]
    return {
        name: {half: agreement(found[half][name], halves[half].gold) for half in halves}
        | pairwise_accuracy(found[DEVELOPMENT][name], found[HELD_OUT][name], development.gold, held_out.gold)
        for name in found[DEVELOPMENT]
    }


def best_measure(table: dict[str, dict]) -> str | None:
    """The measure whose held-out Spearman with GPT-4 is highest (None: no measure has one)."""
    ranked = [name for name in table if table[name][HELD_OUT]["spearman"] is not None]
    return max(ranked, key=lambda name: table[name][HELD_OUT]["spearman"]) if ranked else None


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "meta-evaluate", MetaEvaluateRecipe, recipe_of="evaluate")
    halves = ratings.load(Path(args.ratings))  # checked before the judge loads
    settings = job.recipe.judge
    is_self = settings.model == "self"  # the sft model judging: a smoke test of the evaluate stage, not measured here
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with job.tracker:
        job.log_config()
        judge = None if is_self else backends.load_or_explain(settings, device, job.recipe_path)
        name_of_judge = "self (not measured: the sft model judging is a smoke test)" if is_self else backends.describe(judge)
        found = measured(judge, halves)
        combination = None if judge is None else measures.fit(
            found[DEVELOPMENT], halves[DEVELOPMENT].gold, judge.identity,
            f"the development half: model 1's {len(halves[DEVELOPMENT].gold)} answers in {args.ratings}, against GPT-4's scores",
        )
        if combination is not None:
            for half in halves:
                found[half][measures.COMBINED] = combination(found[half])
        table = agreements(found, halves)
        book_judge = {DEVELOPMENT: agreement(halves[DEVELOPMENT].book_judge, halves[DEVELOPMENT].gold), HELD_OUT: None}
        best = best_measure(table)
        headline = None if best is None else {"measure": best, "held_out_spearman": table[best][HELD_OUT]["spearman"]}
        summary = {"judge": name_of_judge, "judge_model": None if judge is None else judge.identity, "headline": headline,
                   "measures": table, BOOK_JUDGE: book_judge}
        with atomic.directory(args.output) as staging:
            rows = [
                {"half": half, "entry": at, "gpt4": rated.gold[at],
                 BOOK_JUDGE: rated.book_judge[at] if rated.book_judge else None,
                 **{name: values[at] for name, values in found[half].items()}}
                for half, rated in halves.items() for at in range(len(rated.gold))
            ]
            (staging / SCORES).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
            (staging / AGREEMENT).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            if combination is not None:
                combination.save(staging / COMBINATION)
        figure = Path(args.figure)
        with atomic.scratch(figure) as work:
            charts.meta_evaluation(table, book_judge, name_of_judge, work / figure.name)
            os.replace(work / figure.name, figure)
        job.tracker.log_artifact(figure, "meta-evaluate")
        job.tracker.log_artifact(Path(args.output) / SCORES, "meta-evaluate")
        if combination is not None:
            job.tracker.log_artifact(Path(args.output) / COMBINATION, "meta-evaluate")
        job.finish(
            {**summary, "combination": None if combination is None else {"features": combination.features,
             "intercept": combination.intercept, "coefficients": combination.coefficients}},
            f"{sum(len(r.gold) for r in halves.values())} rated answers judged by {name_of_judge} -> {args.output}: "
            f"{describe_agreement(table, book_judge)}",
        )


def describe_agreement(table: dict[str, dict], book_judge: dict) -> str:
    """The summary line's figures: each measure's held-out Spearman, best first, or why it has none."""
    def figure(name: str) -> str:
        held = table[name][HELD_OUT]
        if held["scored"] == 0:
            return f"{name} scored none of the answers"
        return f"{name} {held['spearman']:.2f}" if held["spearman"] is not None else f"{name} n/a ({held['scored']} scored)"

    ranked = sorted(table, key=lambda name: -(table[name][HELD_OUT]["spearman"] or -2))
    llama = book_judge[DEVELOPMENT]["spearman"]
    return (f"Spearman with GPT-4 on the held-out half: {', '.join(map(figure, ranked))}; "
            f"Llama 3 8B (the book's judge, development half) {'n/a' if llama is None else f'{llama:.2f}'}")
