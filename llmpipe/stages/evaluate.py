"""Stage `evaluate` (book ch7.7-7.8): every model answers every test-split instruction, a judge scores
each answer 0-100 against the reference, ROUGE-L measures word overlap. Nothing is dropped: an answer
the judge could not score is kept and counted."""

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from scipy import stats
from transformers import AutoConfig, set_seed

from llmpipe import artifacts, config, generation
from llmpipe.data import instructions
from llmpipe.errors import UserError
from llmpipe.judge.backends import load as load_judge
from llmpipe.judge.base import JudgeSettings
from llmpipe.metrics import charts, evaluate_modules, validity
from llmpipe.runtime import atomic
from llmpipe.stages import base


@dataclass
class Bootstrap:
    resamples: int = config.at_least(1, 1000)
    confidence: float = config.checked(0.95, lambda c: 0 < c < 1, "between 0 and 1, for example 0.95")
    seed: int = config.seed(123)


@dataclass
class EvaluateRecipe:
    RETIRED_KEYS: ClassVar[dict[str, str]] = {
        "split_from": "is gone: evaluate tests on the split of instructions.yaml beside this recipe, the one sft and lora use; remove it"
    }
    # name -> model folder or Hub id; the pretrained model is the control (never instruction-tuned)
    models: dict[str, str] = field(
        default_factory=lambda: {"sft": "artifacts/sft", "lora": "artifacts/lora/merged", "pretrain": "artifacts/pretrain"}
    )
    limit: int | None = config.at_least(1, None)  # evaluate only the first N test examples (quick runs); default all
    batch_size: int = config.at_least(1, 16)
    decoding: generation.Decoding = field(default_factory=generation.Decoding)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    mismatch_seed: int = config.seed(123)  # which other example's reference each validity check scores as a wrong answer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_common_arguments(parser, "evaluate", EvaluateRecipe)
    parser.add_argument("--output", default="artifacts/evaluate", help="folder to write (default: %(default)s)")
    parser.add_argument(
        "--self-judge", default="artifacts/sft",
        help="the pipeline's own model that `judge.model: self` means (default: %(default)s)",
    )


def scored_entries(job: base.Stage) -> tuple[list[dict], instructions.InstructionTask]:
    """The test split exactly as sft and lora cut it (they read the same `instructions.yaml`), and those settings."""
    splits, task = base.instruction_splits(job)
    return splits["test"][: job.recipe.limit], task


def confidence_interval(scores: list[float], settings: Bootstrap) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean (scipy)."""
    if len(scores) < 2 or len(set(scores)) < 2:
        mean = float(np.mean(scores)) if scores else None
        return mean, mean
    result = stats.bootstrap(
        (np.asarray(scores),), np.mean, n_resamples=settings.resamples, confidence_level=settings.confidence,
        method="percentile", rng=np.random.default_rng(settings.seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarize(rows: list[dict], rouge_l: float, settings: Bootstrap) -> dict:
    scored = [row["judge_score"] for row in rows if row["judge_score"] is not None]
    low, high = confidence_interval(scored, settings)
    distributions = [row["judge_detail"] for row in rows if "p_mode" in row["judge_detail"]]
    summary = {
        "judge_mean": round(float(np.mean(scored)), 3) if scored else None,
        "judge_ci_low": None if low is None else round(low, 3),
        "judge_ci_high": None if high is None else round(high, 3),
        "rouge_l": round(rouge_l, 4),
        "response_words": round(float(np.mean([len(row["response"].split()) for row in rows])), 2),
        "examples": len(rows),
        "unscored": len(rows) - len(scored),
    }
    if distributions:  # the hf judge: how sure it was, and how much it wanted to answer with a score at all
        summary["judge_confidence"] = round(float(np.mean([d["p_mode"] for d in distributions])), 4)
        summary["judge_mass_on_scores"] = float(np.mean([d["mass_on_scores"] for d in distributions]))
    return summary


def check_room(job: base.Stage) -> None:
    """Every model's context must hold a prompt and the new tokens: checked on the configs, before any model runs."""
    asked = job.recipe.decoding.max_new_tokens
    for source in job.recipe.models.values():
        context = artifacts.context_length(artifacts.load_pretrained(AutoConfig.from_pretrained, source, "model"))
        if asked >= context:
            raise UserError(f"{job.recipe_path}: `decoding.max_new_tokens` ({asked}) leaves no room for a prompt in "
                            f"{source}'s context of {context} tokens; lower it")


def answer(source: str, entries: list[dict], prompt_format: str, recipe: EvaluateRecipe, device: str, desc: str) -> list[str]:
    tokenizer = artifacts.load_tokenizer(source)
    instructions.prepare_tokenizer(tokenizer, prompt_format)
    model = artifacts.load_causal_lm(source).to(device)
    artifacts.check_vocabulary(model, tokenizer, source)
    settings = generation.decoding(tokenizer, recipe.decoding)
    set_seed(recipe.decoding.seed)
    prompts = [instructions.prompt_text(entry, prompt_format, tokenizer) for entry in entries]
    return generation.generate_responses(model, tokenizer, prompts, settings, prompt_format, recipe.batch_size, desc)


REFERENCE, MISMATCHED = "validity: reference", "validity: mismatched reference"


def describe(judge) -> str:
    return getattr(judge, "description", judge.identity)


def judge_validity(per_set: dict, answers: dict[str, list[str]]) -> dict | None:
    """AUC, paired win rate and length bias, over the pairs the judge scored both of (None: fewer than 2)."""
    pairs = [(r, w) for r, w in zip(per_set[REFERENCE]["scores"], per_set[MISMATCHED]["scores"]) if None not in (r, w)]
    scored = [(s, a) for name in answers for s, a in zip(per_set[name]["scores"], answers[name]) if s is not None]
    if len(pairs) < 2:
        return None
    right, wrong = zip(*pairs)
    return validity.measure(list(right), list(wrong), [s for s, _ in scored], [a for _, a in scored])


def judged_rows(entries: list[dict], requests: list[str], references: list[str], answers: list[str],
                verdicts: dict, overlap: dict) -> list[dict]:
    return [
        {
            "instruction": request, "input": entry.get("input", ""), "reference": reference, "response": response,
            "judge_score": score, "judge_detail": detail, "rouge_l": round(r, 4),
        }
        for entry, request, reference, response, score, detail, r in zip(
            entries, requests, references, answers, verdicts["scores"], verdicts["details"], overlap["rougeL_per_example"]
        )
    ]


def load_judge_or_explain(settings: JudgeSettings, device: str, recipe_path: Path):
    """The judge, loaded before any model answers; a judge that cannot be had names the setting."""
    try:
        return load_judge(settings, device)
    except UserError as err:
        raise UserError(f"{recipe_path}: `judge.model`: {err}") from None


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "evaluate", EvaluateRecipe)
    recipe = job.recipe
    if not recipe.models:
        raise UserError(f"{job.recipe_path}: `models` is empty; name at least one model to evaluate")
    if idle := generation.idle_filters(recipe.decoding):
        keys = " and ".join(f"`decoding.{name}`" for name in idle)
        raise UserError(f"{job.recipe_path}: {keys} {'filters' if len(idle) == 1 else 'filter'} sampling, and `decoding.temperature: 0` decodes greedily; "
                        f"set a temperature above 0, or remove {keys}")
    entries, task = scored_entries(job)
    prompt_format = task.prompt_format
    check_room(job)
    is_self = recipe.judge.model == "self"
    judge_settings = dataclasses.replace(recipe.judge, model=args.self_judge) if is_self else recipe.judge
    device = "cuda" if torch.cuda.is_available() else "cpu"

    with job.tracker:
        job.log_config(**config.flatten(task, "instructions."))
        the_judge = load_judge_or_explain(judge_settings, device, job.recipe_path)
        name_of_judge = "self" if is_self else describe(the_judge)  # self: the sft model judging, a smoke test
        judged, rouge = evaluate_modules.load("judge"), evaluate_modules.load("rouge_l")
        references = [instructions.reference(entry) for entry in entries]
        requests = [instructions.request(entry) for entry in entries]
        answers = {name: answer(source, entries, prompt_format, recipe, device, f"{name}: generating")
                   for name, source in recipe.models.items()}
        # Validity checks beside the models' answers: each reference, and another example's (wrong) one.
        checks = {REFERENCE: references, MISMATCHED: validity.mismatched(references, recipe.mismatch_seed)}
        # One call for everything: the hf judge scores all answers to an example on their shared prompt beginning.
        every = {**answers, **checks}
        verdicts = judged.compute(
            predictions=[a for group in every.values() for a in group], references=references * len(every),
            requests=requests * len(every), judge=the_judge,
        )
        per_set = {
            name: {key: verdicts[key][i * len(entries) : (i + 1) * len(entries)] for key in ("scores", "details")}
            for i, name in enumerate(every)
        }
        results = {}
        with atomic.directory(args.output) as staging:
            for name, source in recipe.models.items():
                overlap = rouge.compute(predictions=answers[name], references=references)
                rows = judged_rows(entries, requests, references, answers[name], per_set[name], overlap)
                (staging / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
                job.tracker.log_table({key: [row[key] for row in rows] for key in rows[0]}, f"evaluate/{name}.json")
                job.tracker.log_evaluation(name, rows, name_of_judge)
                results[name] = summarize(rows, overlap["rougeL"], recipe.bootstrap)
                results[name] |= {"model": source, "weights_sha256": artifacts.weights_digest(source)}  # for the cards
            trust = judge_validity(per_set, answers)
            checked_rows = [
                {"instruction": request, "reference": reference, "mismatched_reference": wrong,
                 "reference_score": right_score, "mismatched_score": wrong_score}
                for request, reference, wrong, right_score, wrong_score in zip(
                    requests, references, checks[MISMATCHED], per_set[REFERENCE]["scores"], per_set[MISMATCHED]["scores"]
                )
            ]
            (staging / "validity.jsonl").write_text("".join(json.dumps(row) + "\n" for row in checked_rows), encoding="utf-8")
            charts.judge_scores(results, name_of_judge, recipe.bootstrap.confidence, staging / "scores.png", trust)
        job.tracker.log_artifact(Path(args.output) / "scores.png", "evaluate")

        scores = ", ".join(f"{name} {m['judge_mean']:.2f}" for name, m in results.items() if m["judge_mean"] is not None)
        checked = "" if trust is None else (
            f"; judge validity: AUC {trust['auc']:.2f}, win rate {trust['win_rate']:.0%} over {trust['pairs']} pairs, "
            f"length bias {trust['length_bias']}"
        )
        job.finish(
            {"judge": name_of_judge, "judge_model": the_judge.identity, "test_examples": len(entries),
             "validity": trust, **results},
            f"{len(entries)} test instructions x {len(results)} models judged by {name_of_judge} -> {Path(args.output)}: "
            f"mean score {scores or 'none'}{checked}",
        )

