"""The classical baseline the classifier must beat: TF-IDF features + logistic regression (scikit-learn)."""

from datasets import DatasetDict
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from llmpipe.metrics.scores import classification_scores


def tfidf_logreg(splits: DatasetDict, seed: int) -> dict[str, float]:
    """Fit on the train split; score every split. Keys like `baseline_test_accuracy`."""
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(splits["train"]["text"], splits["train"]["label"])
    metrics = {}
    for name, split in splits.items():
        scores = classification_scores(split["label"], model.predict(split["text"]))
        metrics |= {f"baseline_{name}_{key}": value for key, value in scores.items()}
    return metrics
