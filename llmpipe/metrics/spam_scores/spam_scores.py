"""Accuracy, and precision, recall and F1 of the positive class (spam = 1), from scikit-learn."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

_INPUTS = """
Args:
    predictions: predicted labels (0 = ham, 1 = spam).
    references: true labels.
Returns:
    accuracy, precision, recall, f1 (of the spam class; 0 where undefined).
"""


class SpamScores(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Binary classification scores of the positive class.",
            citation="Pedregosa et al., 2011. Scikit-learn: Machine Learning in Python.",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, average="binary", pos_label=1, zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
        }
