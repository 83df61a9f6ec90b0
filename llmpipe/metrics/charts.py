"""Figures the stages save beside their outputs (matplotlib, no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend


def judge_scores(results: dict[str, dict], judge: str, confidence: float, path: Path, validity: dict | None = None) -> None:
    """Mean judge score per model with its bootstrap confidence interval; beside them, in grey, the judge's
    validity check: its mean score of the references themselves and of mismatched references."""
    names = list(results)
    means = [results[n]["judge_mean"] or 0.0 for n in names]
    # low and high are both None exactly when no example was scored: no error bar then
    below = [m - results[n]["judge_ci_low"] if results[n]["judge_ci_low"] is not None else 0.0 for n, m in zip(names, means)]
    above = [results[n]["judge_ci_high"] - m if results[n]["judge_ci_high"] is not None else 0.0 for n, m in zip(names, means)]
    figure, axes = plt.subplots(figsize=(1.6 * (len(names) + 2 * bool(validity)) + 2, 3.8))
    axes.bar(names, means, yerr=[below, above], capsize=6, color="tab:blue")
    title = f"judge: {judge}"
    if validity:
        axes.bar(["reference", "mismatched\nreference"], [validity["reference_mean"], validity["mismatched_mean"]], color="tab:gray")
        title += (f"\nvalidity: AUC {validity['auc']:.2f}, paired win rate {validity['win_rate']:.0%}, "
                  f"length bias (Spearman) {validity['length_bias']}")
    axes.set_ylim(0, 100)
    axes.set_ylabel(f"mean judge score ({confidence:.0%} CI)")
    axes.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def adaptation(methods: dict[str, dict], baseline: float | None, path: Path) -> None:
    """Test accuracy against the share of parameters trained (log axis), one point per method, and the
    TF-IDF baseline's accuracy on the same split as a line (no methods: a figure that says so)."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    if methods:
        for name, row in methods.items():
            axes.scatter(row["trainable_fraction"], row["test_accuracy"], color="tab:blue")
            axes.annotate(name, (row["trainable_fraction"], row["test_accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        axes.axhline(baseline, color="tab:gray", linestyle="--", label=f"TF-IDF + logistic regression ({baseline:.2%})")
        axes.set_xscale("log")
        axes.set_xlabel("share of parameters trained")
        axes.set_ylabel("spam test accuracy")
        axes.set_title("adaptation methods on the same split, seed and data", fontsize=9)
        axes.legend(fontsize=8, loc="lower right")
    else:
        axes.text(0.5, 0.5, "no adaptation methods compared\n(params.yaml `adaptation` is empty)", ha="center", va="center")
        axes.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
