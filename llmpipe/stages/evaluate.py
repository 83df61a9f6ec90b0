"""Stage `evaluate` (book ch7.7-7.8): every model answers every test-split instruction, a judge scores
each answer 0-100 against the reference, ROUGE-L measures word overlap, and the other measures of
metrics/measures.py come beside them. Nothing is dropped: an answer the judge could not score is kept and
counted. The stage leads with the measure that agrees best with GPT-4 on the book's held-out rated answers
(the meta-evaluate stage's finding, read from its output folder)."""

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
from llmpipe.data import instructions, preferences
from llmpipe.errors import UserError
from llmpipe.judge import backends
from llmpipe.judge.base import JudgeSettings
from llmpipe.metrics import charts, evaluate_modules, measures, politeness, validity
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
    parser.add_argument(
        "--meta-evaluation", default="artifacts/meta-evaluate",
        help="the meta-evaluate stage's output: each measure's agreement with GPT-4 and the fitted combination (default: %(default)s)",
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


def mean_with_interval(values: list[float | None], settings: Bootstrap) -> dict:
    """The mean of the values that are there, with its bootstrap interval (None: no value)."""
    scored = [value for value in values if value is not None]
    low, high = confidence_interval(scored, settings)
    return {key: None if value is None else round(value, 4)
            for key, value in (("mean", float(np.mean(scored)) if scored else None), ("ci_low", low), ("ci_high", high))}


def summarize(rows: list[dict], values: dict[str, list[float | None]], headline: str | None, settings: Bootstrap) -> dict:
    """One model's figures: the headline measure first, then every measure's mean and interval
    (`<measure>_mean`, `_ci_low`, `_ci_high`), the answers' length and the judge's unscored answers."""
    summary = {f"{name}_{key}": value for name, per_answer in values.items()
               for key, value in mean_with_interval(per_answer, settings).items()}
    if headline is not None:
        summary = {"headline": headline, **{f"headline_{key}": summary[f"{headline}_{key}"] for key in ("mean", "ci_low", "ci_high")}} | summary
    distributions = [row["judge_detail"] for row in rows if "p_mode" in row["judge_detail"]]
    summary |= {
        "response_words": round(float(np.mean([len(row["response"].split()) for row in rows])), 2),
        "examples": len(rows),
        "unscored": sum(row["judge_score"] is None for row in rows),
    }
    if distributions:  # the hf judge: how sure it was, and how much it wanted to answer with a score at all
        summary["judge_confidence"] = round(float(np.mean([d["p_mode"] for d in distributions])), 4)
        summary["judge_mass_on_scores"] = float(np.mean([d["mass_on_scores"] for d in distributions]))
    return summary


def politeness_lists(job: base.Stage, task: instructions.InstructionTask) -> dict[str, list[str]] | None:
    """The politeness word lists of the preference data's train pairs (the dpo stage's), or None without one."""
    if not job.params.preference_data:
        return None
    settings = base.instructions_file(job)
    pairs = preferences.splits(job.params.preference_data, job.params.instruction_data, task, settings)["train"]
    return politeness.word_lists(pairs)


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


def judge_validity(per_set: dict, answers: dict[str, list[str]]) -> dict | None:
    """AUC, paired win rate and length bias, over the pairs the judge scored both of (None: fewer than 2)."""
    pairs = [(r, w) for r, w in zip(per_set[REFERENCE]["scores"], per_set[MISMATCHED]["scores"]) if None not in (r, w)]
    scored = [(s, a) for name in answers for s, a in zip(per_set[name]["scores"], answers[name]) if s is not None]
    if len(pairs) < 2:
        return None
    right, wrong = zip(*pairs)
    return validity.measure(list(right), list(wrong), [s for s, _ in scored], [a for _, a in scored])


def judged_rows(entries: list[dict], requests: list[str], references: list[str], answers: list[str],
                verdicts: dict, values: dict[str, list[float | None]]) -> list[dict]:
    """Per answer: what was asked, the answers, the judge's verdict and every other measure."""
    others = {name: per_answer for name, per_answer in values.items() if name != "judge"}
    return [
        {
            "instruction": request, "input": entry.get("input", ""), "reference": reference, "response": response,
            "judge_score": score, "judge_detail": detail, **{name: None if v is None else round(v, 4) for name, v in zip(others, measured)},
        }
        for entry, request, reference, response, score, detail, *measured in zip(
            entries, requests, references, answers, verdicts["scores"], verdicts["details"], *others.values()
        )
    ]


def read_meta_evaluation(folder: Path) -> tuple[dict, measures.Combination | None]:
    """The meta-evaluate stage's agreement table and combination."""
    found = folder / "agreement.json"
    if not found.is_file():
        raise UserError(f"{found}: no such file; run `llmpipe meta-evaluate` (or `dvc repro`) first: evaluate leads "
                        "with the measure that agrees best with GPT-4 there")
    try:
        agreement = json.loads(found.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{found}: not valid JSON ({err}); run `llmpipe meta-evaluate` again") from None
    return agreement, measures.load_combination(folder / "combination.json")


def check_measured_judge(agreement: dict, judge_identity: str | None, folder: Path) -> None:
    """The meta-evaluation must be of this very judge (None: `self`, which it does not measure)."""
    if agreement.get("judge_model") != judge_identity:
        raise UserError(f"{folder / 'agreement.json'}: measured for the judge {agreement.get('judge_model') or 'self'}, but this "
                        f"run's judge is {judge_identity or 'self'}; run `llmpipe meta-evaluate` with the same recipe first")


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
    polite_words = politeness_lists(job, task)
    is_self = recipe.judge.model == "self"
    judge_settings = dataclasses.replace(recipe.judge, model=args.self_judge) if is_self else recipe.judge
    device = "cuda" if torch.cuda.is_available() else "cpu"

    with job.tracker:
        job.log_config(**config.flatten(task, "instructions."))
        the_judge = backends.load_or_explain(judge_settings, device, job.recipe_path)
        agreement, combination = read_meta_evaluation(Path(args.meta_evaluation))  # after the judge: its own errors first
        name_of_judge = "self" if is_self else backends.describe(the_judge)  # self: the sft model judging, a smoke test
        check_measured_judge(agreement, None if is_self else the_judge.identity, Path(args.meta_evaluation))
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
        values = {}
        for name in recipe.models:
            values[name] = measures.of_answers(per_set[name], rouge.compute(predictions=answers[name], references=references)["rougeL_per_example"])
            if combination is not None:
                values[name][measures.COMBINED] = combination(values[name])
        # the measure that agrees best with GPT-4 on the held-out half, as the meta-evaluation found it
        reported = next(iter(values.values()))
        led = agreement["headline"] if agreement.get("headline") and agreement["headline"]["measure"] in reported else None
        headline, agreeing = (led["measure"], led["held_out_spearman"]) if led else (None, None)
        results = {}
        with atomic.directory(args.output) as staging:
            for name, source in recipe.models.items():
                rows = judged_rows(entries, requests, references, answers[name], per_set[name], values[name])
                (staging / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
                job.tracker.log_table({key: [row[key] for row in rows] for key in rows[0]}, f"evaluate/{name}.json")
                job.tracker.log_evaluation(name, [
                    {"messages": instructions.as_messages(entry)[:-1], "response": row["response"], "reference": row["reference"],
                     "feedback": measures.feedback(row, name_of_judge, headline, agreement["measures"])}
                    for entry, row in zip(entries, rows)
                ], name_of_judge)
                results[name] = summarize(rows, values[name], headline, recipe.bootstrap)
                if polite_words is not None:  # what preference tuning changed: the answers' politeness and length
                    results[name]["politeness"] = politeness.rates(answers[name], polite_words)
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
            charts.judge_scores(results, name_of_judge, recipe.bootstrap.confidence, staging / "scores.png", trust,
                                None if headline is None else (headline, agreeing))
        job.tracker.log_artifact(Path(args.output) / "scores.png", "evaluate")
        lead = None if headline is None else {
            "measure": headline, "spearman_with_gpt4": agreeing,
            "on": "the held-out half of the book's rated answers (model 2's, data/judge-ratings); see metrics/meta-evaluate.json",
        }
        job.finish(
            {"headline": lead, "judge": name_of_judge, "judge_model": the_judge.identity, "test_examples": len(entries),
             "validity": trust, **results},
            f"{len(entries)} test instructions x {len(results)} models judged by {name_of_judge} -> {Path(args.output)}: "
            f"{describe(results, headline, agreeing, trust)}",
        )


def describe(results: dict[str, dict], headline: str | None, agreeing: float | None, trust: dict | None) -> str:
    """The summary line: the headline measure per model with its interval and its agreement with GPT-4, then
    the judge's own score and its validity check."""
    def means(measure: str, interval: bool) -> str:
        found = [(name, m[f"{measure}_mean"], m[f"{measure}_ci_low"], m[f"{measure}_ci_high"]) for name, m in results.items()
                 if m.get(f"{measure}_mean") is not None]
        return ", ".join(f"{name} {mean:.4g}" + (f" [{low:.4g}, {high:.4g}]" if interval else "") for name, mean, low, high in found) or "none"

    led = "" if headline is None else f"{headline} {means(headline, True)} (Spearman {agreeing:.2f} with GPT-4 on the book's held-out ratings); "
    checked = "" if trust is None else (
        f"; judge validity: AUC {trust['auc']:.2f}, win rate {trust['win_rate']:.0%} over {trust['pairs']} pairs, "
        f"length bias {trust['length_bias']}"
    )
    return f"{led}judge score {means('judge', False)}{checked}"
