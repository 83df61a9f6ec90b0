"""Classify: a text's probability of each label (ham and spam) under a classifier the pipeline trained."""

from transformers import Pipeline

from llmpipe import adapters
from llmpipe.errors import UserError


def probabilities(classifier: Pipeline, text: str) -> dict[str, float]:
    """label -> probability, every label; a text longer than the model's context is cut to fit, as
    `llmpipe classify-text` cuts it."""
    if not text.strip():
        raise UserError("the text is empty; give the message to classify")
    results = classifier(text, top_k=None, truncation=True, max_length=adapters.text_positions(classifier.model))
    return {result["label"]: result["score"] for result in results}
