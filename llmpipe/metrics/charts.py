"""Figures the stages save beside their outputs (matplotlib, no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend


def _means_with_intervals(axes, results: dict[str, dict], measure: str, color: str) -> None:
    """One bar per model: the measure's mean with its bootstrap interval (none where nothing was scored)."""
    names = list(results)
    means = [results[n][f"{measure}_mean"] or 0.0 for n in names]
    below = [m - results[n][f"{measure}_ci_low"] if results[n][f"{measure}_ci_low"] is not None else 0.0 for n, m in zip(names, means)]
    above = [results[n][f"{measure}_ci_high"] - m if results[n][f"{measure}_ci_high"] is not None else 0.0 for n, m in zip(names, means)]
    axes.bar(names, means, yerr=[below, above], capsize=6, color=color)


def judge_scores(results: dict[str, dict], judge: str, confidence: float, path: Path, validity: dict | None = None,
                 headline: tuple[str, float] | None = None) -> None:
    """First (`headline`: the measure that agrees best with GPT-4, and its Spearman), that measure's mean per
    model with its bootstrap interval; then the judge's mean score per model, and beside them, in grey, the
    judge's validity check: its mean score of the references themselves and of mismatched references."""
    names = list(results)
    panels = 1 + (headline is not None and headline[0] != "judge")
    widths = [1.4 * len(names) + 1.5] * (panels - 1) + [1.4 * (len(names) + 2 * bool(validity)) + 1.5]
    figure, axes = plt.subplots(1, panels, figsize=(sum(widths), 3.8), squeeze=False, gridspec_kw={"width_ratios": widths})
    if panels == 2:
        measure, spearman = headline
        _means_with_intervals(axes[0, 0], results, measure, "tab:green")
        axes[0, 0].set_ylabel(f"mean {measure} ({confidence:.0%} CI)")
        axes[0, 0].set_title(f"headline: {measure}\nSpearman {spearman:.2f} with GPT-4 on the book's held-out ratings", fontsize=8)
    judged = axes[0, -1]
    _means_with_intervals(judged, results, "judge", "tab:blue")
    title = f"judge: {judge}"
    if panels == 1 and headline is not None:
        title += f"\nSpearman {headline[1]:.2f} with GPT-4 on the book's held-out ratings"
    if validity:
        judged.bar(["reference", "mismatched\nreference"], [validity["reference_mean"], validity["mismatched_mean"]], color="tab:gray")
        title += (f"\nvalidity: AUC {validity['auc']:.2f}, paired win rate {validity['win_rate']:.0%}, "
                  f"length bias (Spearman) {validity['length_bias']}")
    judged.set_ylim(0, 100)
    judged.set_ylabel(f"mean judge score ({confidence:.0%} CI)")
    judged.set_title(title, fontsize=8)
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


def meta_evaluation(table: dict[str, dict], book_judge: dict, judge: str, path: Path) -> None:
    """Each measure's agreement with GPT-4 on the book's rated answers, per half (Spearman; AUC of GPT-4 >= 80),
    beside Llama 3 8B, the book's judge (development half only). A measure with no figure gets no bar."""
    rows = {**table, "Llama 3 8B (book's judge)": book_judge}
    names = list(rows)
    figure, panels = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 2), sharey=True)
    for axes, key, label in zip(panels, ("spearman", "auc"), ("Spearman with GPT-4", "AUC: GPT-4 >= 80 vs the rest")):
        for offset, (half, color) in enumerate((("development", "tab:blue"), ("held-out", "tab:orange"))):
            values = [(rows[name].get(half) or {}).get(key) for name in names]
            positions = [at + 0.2 - 0.4 * offset for at in range(len(names))]
            axes.barh(positions, [v or 0.0 for v in values], height=0.4, color=color, label=f"{half} half")
            low = -0.2 if key == "spearman" else 0.3
            for at, value in zip(positions, values):
                axes.text(low if value is None else max(value, low), at, " n/a" if value is None else f" {value:.2f}", va="center", fontsize=7)
        axes.axvline(0.5 if key == "auc" else 0.0, color="tab:gray", linewidth=0.8)
        axes.set_xlim(low, 1.1)
        axes.set_xlabel(label)
    panels[0].set_yticks(range(len(names)), names, fontsize=8)
    panels[0].invert_yaxis()
    panels[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(f"agreement with GPT-4 on the book's 200 rated answers; judge: {judge}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
