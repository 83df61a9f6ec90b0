"""Figures the stages save beside their outputs (matplotlib, no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend


def judge_scores(results: dict[str, dict], judge: str, confidence: float, path: Path) -> None:
    """Mean judge score per model with its bootstrap confidence interval."""
    names = list(results)
    means = [results[n]["judge_mean"] or 0.0 for n in names]
    # low and high are both None exactly when no example was scored: no error bar then
    below = [m - results[n]["judge_ci_low"] if results[n]["judge_ci_low"] is not None else 0.0 for n, m in zip(names, means)]
    above = [results[n]["judge_ci_high"] - m if results[n]["judge_ci_high"] is not None else 0.0 for n, m in zip(names, means)]
    figure, axes = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    axes.bar(names, means, yerr=[below, above], capsize=6, color="tab:blue")
    axes.set_ylim(0, 100)
    axes.set_ylabel(f"mean judge score ({confidence:.0%} CI)")
    axes.set_title(f"judge: {judge}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
