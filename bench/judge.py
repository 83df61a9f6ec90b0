"""`make bench`, part `judge`: the `hf` judge one prompt at a time (the 101 candidates on copies of the
prompt's KV cache) against the batched judge (shared prompt beginnings, a digit trie, repeats scored once),
in the same process on the same examples: judged examples per second of each, and the largest difference
between their scores."""

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
    judge = HfJudge(JudgeSettings(model=judge_folder), batch_size=batch_size)
    asked = examples(data, count)
    start = time.perf_counter()
    one = [judge(*example) for example in asked]
    plain = time.perf_counter() - start
    start = time.perf_counter()
    many = judge.judge_many(asked)
    batched = time.perf_counter() - start
    return {
        "judge": judge.description,
        "examples": len(asked),
        "one_at_a_time_examples_per_second": round(len(asked) / plain, 3),
        "batched_examples_per_second": round(len(asked) / batched, 3),
        "speedup": round(plain / batched, 2),
        "max_score_difference": max(abs(a.score - b.score) for a, b in zip(one, many)),
    }
