"""`make bench`, part `judge`: the `hf` judge one prompt at a time against the batched judge (shared prompt
beginnings packed in one sequence, repeats scored once), under each reading of its answer (`exact`: 101 trie
nodes a prompt; `first_number`, the default: 10), in the same process on the same examples: judged examples
per second of each, and the largest difference between one-at-a-time and batched scores."""

import json
import time
from pathlib import Path

from llmpipe.data import instructions
from llmpipe.judge.base import JudgeSettings
from llmpipe.judge.hf import HfJudge
from llmpipe.metrics.validity import mismatched


def examples(data: Path, count: int) -> list[tuple[str, str, str]]:
    """What the evaluate stage asks per test example, in miniature: the reference, a mismatched reference,
    and a long answer (the two joined)."""
    entries = json.loads(data.read_text(encoding="utf-8"))[:count]
    references = [instructions.reference(entry) for entry in entries]
    wrong = mismatched(references, seed=123)
    found = []
    for entry, right, other in zip(entries, references, wrong):
        request = instructions.request(entry)
        found += [(request, right, answer) for answer in (right, other, f"{right} {other}")]
    return found


def measure(judge_folder: str, data: Path, count: int, batch_size: int = 8) -> dict:
    asked = examples(data, count)
    readings, description = {}, None
    for reading in ("exact", "first_number"):
        judge = HfJudge(JudgeSettings(model=judge_folder, reading=reading), batch_size=batch_size)
        description = judge.description
        start = time.perf_counter()
        one = [judge(*example) for example in asked]
        plain = time.perf_counter() - start
        start = time.perf_counter()
        many = judge.judge_many(asked)
        batched = time.perf_counter() - start
        readings[reading] = {
            "one_at_a_time_examples_per_second": round(len(asked) / plain, 3),
            "batched_examples_per_second": round(len(asked) / batched, 3),
            "speedup": round(plain / batched, 2),
            "max_score_difference": max(abs(a.score - b.score) for a, b in zip(one, many)),
        }
    return {
        "judge": description,
        "examples": len(asked),
        "readings": readings,
        # the default against where the stage started: exact, one prompt at a time
        "speedup": round(readings["first_number"]["batched_examples_per_second"] / readings["exact"]["one_at_a_time_examples_per_second"], 2),
    }
