"""Classification scores of the positive (spam) class, from scikit-learn."""

from sklearn.metrics import accuracy_score, precision_recall_fscore_support


def classification_scores(labels, predictions) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(
        list(labels), list(predictions), average="binary", pos_label=1, zero_division=0
    )
    return {
        "accuracy": round(float(accuracy_score(list(labels), list(predictions))), 4),
        "precision": round(float(precision), 4),
        "recall": round(float(recall), 4),
        "f1": round(float(f1), 4),
    }
