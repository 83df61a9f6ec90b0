"""Stage `classify` (book ch6, appendix E): spam classification with `AutoModelForSequenceClassification`
(the last token's logits) on the pretrained model, any decoder-only architecture transformers knows (GPT-2,
Llama, ...), trained by `Trainer`; what trains is a recipe choice, from the head alone (a probe) through
lightweight fine-tuning (BitFit, PEFT's adapters and prompts) to every weight. A TF-IDF +
logistic-regression baseline is scored on the same split."""

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from peft import (
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from llmpipe import adapters, artifacts, config
from llmpipe.config import library_section
from llmpipe.data import spam
from llmpipe.hub import cards
from llmpipe.metrics import baseline
from llmpipe.metrics.scores import classification_scores
from llmpipe.runtime import checkpoints, throughput
from llmpipe.stages import base, training


@dataclass
class ClassifyRecipe:
    init_from: str | None = None  # Hub id or folder (e.g. gpt2); default: the pretrain stage's model (--base)
    # probe: the head only; bitfit: the biases + head; last_block: head + last block + final norm; all: every
    # weight; lora, ia3, prompt_tuning, p_tuning, prefix_tuning: PEFT's method (its section below) + head
    trainable: Literal[
        "probe", "bitfit", "last_block", "all", "lora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning"
    ] = "last_block"
    split: spam.SpamSplit = field(default_factory=spam.SpamSplit)
    max_length: int | None = config.at_least(1, None)  # tokens kept per message; default: the model's context
    model: dict = field(default_factory=dict)  # the base model's config values to change (its own config class's arguments)
    lora: dict = library_section(LoraConfig)  # with trainable: lora
    ia3: dict = library_section(IA3Config)  # with trainable: ia3
    prompt_tuning: dict = library_section(PromptTuningConfig)  # with trainable: prompt_tuning
    p_tuning: dict = library_section(PromptEncoderConfig)  # with trainable: p_tuning
    prefix_tuning: dict = library_section(PrefixTuningConfig)  # with trainable: prefix_tuning
    training: dict = library_section(TrainingArguments)


def load_classifier(source: str, config_changes: dict) -> PreTrainedModel:
    return artifacts.load_classifier(source, "model to classify with", **artifacts.label_settings(spam.LABELS), **config_changes)


def config_changes(recipe: ClassifyRecipe, source: str, recipe_path) -> dict:
    """The recipe's `model` section, checked against the base model's own config class (GPT2Config,
    LlamaConfig, ...) before anything loads its weights."""
    if not recipe.model:
        return {}
    base_config = artifacts.load_pretrained(AutoConfig.from_pretrained, source, "model")
    return config.check_library_section(type(base_config), recipe.model, str(recipe_path), "model")


def select_trainable(model: PreTrainedModel, trainable: str, settings: dict) -> PreTrainedModel:
    """The model with only `trainable`'s part left to train; a PEFT method (`settings`: its recipe section)
    wraps it, and PEFT trains the classification head beside the adapter."""
    if trainable in adapters.PEFT_METHODS:
        return get_peft_model(model, adapters.peft_config(trainable, settings, TaskType.SEQ_CLS, model))
    parts = {
        "probe": lambda: [],
        "bitfit": lambda: adapters.bias_terms(model),
        "last_block": lambda: adapters.last_block_and_final_norm(model),
    }
    if trainable in parts:
        chosen = parts[trainable]()
        model.requires_grad_(False)
        for part in (model.score, *chosen):
            part.requires_grad_(True)
    return model


def compute_scores(prediction) -> dict[str, float]:
    return classification_scores(prediction.label_ids, np.argmax(prediction.predictions, axis=-1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_training_arguments(parser, "classify", ClassifyRecipe)


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "classify", ClassifyRecipe)
    recipe = job.recipe
    base.reject_owned(
        recipe.model, ("num_labels", "id2label", "label2id", "problem_type", "pad_token_id"), f"{job.recipe_path}: `model",
        "the two labels (ham, spam; one per text) and the tokenizer",
    )
    splits = spam.balanced_splits(spam.read_messages(job.params.classify_data), recipe.split, job.recipe_path)
    source = recipe.init_from or args.base
    tokenizer = artifacts.load_tokenizer(source)
    # the head finds each text's last token by the tokenizer's padding id; one label per text (as Trainer's first
    # step would record it, so that a merged adapter's folder says so too)
    changes = config_changes(recipe, source, job.recipe_path) | {
        "pad_token_id": tokenizer.pad_token_id, "problem_type": "single_label_classification"
    }
    if recipe.trainable in adapters.PEFT_METHODS:
        classifier = artifacts.load_pretrained(AutoConfig.from_pretrained, source, "model", **artifacts.label_settings(spam.LABELS), **changes)
        section = getattr(recipe, recipe.trainable)
        adapters.check_on_skeleton(lambda skeleton: adapters.peft_config(recipe.trainable, section, TaskType.SEQ_CLS, skeleton),
                                   AutoModelForSequenceClassification, classifier, str(job.recipe_path))

    with job.tracker:
        job.log_config()
        training_args = training.arguments(TrainingArguments, recipe.training, args.checkpoints, job)
        set_seed(training_args.seed)
        model = load_classifier(source, changes)
        artifacts.check_vocabulary(model, tokenizer, source)
        if recipe.trainable in adapters.PROMPT_AS_EMBEDDINGS:
            # PEFT feeds the prompt as embeddings, so the head cannot find the last real token by its id: pad on
            # the left, where the last position is always a real token (saved with the tokenizer)
            tokenizer.padding_side = "left"
        model = select_trainable(model, recipe.trainable, getattr(recipe, recipe.trainable, {}))
        room = adapters.text_positions(model)
        max_length = min(recipe.max_length or room, room)
        encoded = splits.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length), batched=True)
        counts = artifacts.parameter_counts(model)
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=encoded["train"],
            eval_dataset=encoded["validation"],
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=compute_scores,
        )
        throughput.add_to(trainer, timer := throughput.Throughput())
        training.train(trainer, args, checkpoints.run_identity(recipe, model, artifacts.weights_digest(source), [job.params.classify_data]))
        final = trainer.evaluate(eval_dataset=dict(encoded))
        metrics = {}
        if trainer.is_world_process_zero():  # rank 0 reports (the other ranks would measure the CPU peak against it)
            metrics = {"trainable": recipe.trainable} | counts | timer.summary(trainer)
            for split in splits:
                for key in ("accuracy", "precision", "recall", "f1"):
                    metrics[f"{split}_{key}"] = round(final[f"eval_{split}_{key}"], 4)
            metrics |= baseline.tfidf_logreg(splits, training_args.seed)
        is_adapter = recipe.trainable in adapters.PEFT_METHODS and recipe.trainable not in adapters.MERGEABLE  # saved alone
        with training.output_folder(args.output, trainer) as staging:
            if recipe.trainable in adapters.MERGEABLE:
                adapters.save_adapter_and_merged(trainer, staging / "adapter", staging, lambda: load_classifier(source, changes))
            else:  # a full model folder, or (prompt and prefix tuning) the adapter alone, with the tokenizer
                trainer.save_model(str(staging))
            artifact = "classify-adapter" if is_adapter else "classify"
            cards.write(staging, card := job.card(artifact, metrics, args.output, source, model_type=model.config.model_type))
        if not trainer.is_world_process_zero():
            return

        job.tracker.register_model(args.output, "text-classification", card, source if is_adapter else None, spam.LABELS)
        job.finish(
            metrics,
            f"spam classifier ({recipe.trainable}: {counts['trainable_parameters']:,} of "
            f"{counts['total_parameters']:,} parameters trained) -> {Path(args.output)}: test accuracy "
            f"{metrics['test_accuracy']:.2%}, TF-IDF baseline {metrics['baseline_test_accuracy']:.2%}",
        )
        checkpoints.mark_finished(args.checkpoints)
