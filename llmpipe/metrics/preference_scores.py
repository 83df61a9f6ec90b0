"""Held-out preference pairs scored by DPO's implicit reward, beta x (log pi(answer) - log pi_ref(answer)):
per pair the margin of the chosen answer's reward over the rejected one's, then the reward accuracy (the
share of pairs with a positive margin), the mean margin and the DPO loss (-log sigmoid(margin)), overall and
by pair type; beside them the likelihood accuracy, the share of pairs whose chosen answer the model itself
finds more likely (whole-answer log-probabilities, so shorter answers are favoured).

Before training the model is the reference: every margin is zero (reward accuracy 0.5, loss ln 2), and its
log-probabilities are those DPOTrainer computed for the reference, so the scores before need no forward pass.
TRL's own `rewards/accuracies` is a batch mean with a strict `>`: 0.0 at step 0 and never a point for a tie.
Here a tie counts half, so a model that has learnt nothing scores 0.5 and pairs whose answers are equal can
never raise the accuracy."""

import math

import torch
from datasets import Dataset
from trl import DPOTrainer

from llmpipe.data.preferences import PAIR_TYPES

TIE = 1e-4  # differences this close to zero are ties: the same sums of log-probabilities up to float rounding


def sequence_log_probs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the chosen and the rejected answers of a DPOTrainer batch (the chosen
    rows first), from the fused LM head TRL puts on the model, as DPOTrainer's loss reads them."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True)
    positions = batch["completion_mask"].size(1) - 1  # prompt-learning adapters put virtual tokens in front
    return outputs.log_probs[:, -positions:].sum(dim=1).chunk(2)


def pair_log_probs(trainer: DPOTrainer, dataset: Dataset) -> dict[str, list[float]]:
    """Per pair, in the dataset's order, the summed log-probabilities of each answer under the trainer's model
    now (`chosen`, `rejected`) and under the reference (`ref_chosen`, `ref_rejected`). `dataset` is one
    DPOTrainer prepared: tokenized and, with `precompute_ref_log_probs`, holding the reference's
    log-probabilities; otherwise the reference is the trainer's (its reference model, or the model with its
    adapter disabled)."""
    model = trainer.model
    was_training = model.training
    model.eval()
    found = {"chosen": [], "rejected": [], "ref_chosen": [], "ref_rejected": []}
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader(dataset):
            policy = sequence_log_probs(model, batch)
            if "ref_chosen_logps" in batch:
                reference = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            else:
                reference = trainer.compute_ref_log_probs(trainer.ref_model or model, batch)
            for name, values in zip(found, (*policy, *reference)):
                found[name] += trainer.accelerator.gather_for_metrics(values).tolist()
    model.train(was_training)
    return found


def scores(log_probs: dict[str, list[float]], beta: float, pair_types: list[str | None], prefix: str) -> dict[str, float]:
    """`<prefix>reward_accuracy`, `<prefix>margin`, `<prefix>dpo_loss` and `<prefix>likelihood_accuracy` over
    all pairs, and each `..._<pair type>` too."""
    pairs = list(zip(log_probs["chosen"], log_probs["rejected"], log_probs["ref_chosen"], log_probs["ref_rejected"]))
    margins = [beta * ((chosen - ref_chosen) - (rejected - ref_rejected)) for chosen, rejected, ref_chosen, ref_rejected in pairs]
    likelier = [chosen - rejected for chosen, rejected, _, _ in pairs]

    def summary(indices: list[int], suffix: str) -> dict[str, float]:
        def accuracy(differences: list[float]) -> float:
            return round(sum(1.0 if d > TIE else 0.5 if d >= -TIE else 0.0 for d in differences) / len(differences), 4)

        selected = [margins[i] for i in indices]
        return {
            f"{prefix}reward_accuracy{suffix}": accuracy(selected),
            f"{prefix}margin{suffix}": round(sum(selected) / len(selected), 4),
            f"{prefix}dpo_loss{suffix}": round(sum(math.log1p(math.exp(-m)) if m > -30 else -m for m in selected) / len(selected), 4),
            f"{prefix}likelihood_accuracy{suffix}": accuracy([likelier[i] for i in indices]),
        }

    found = summary(list(range(len(pairs))), "")
    for kind in PAIR_TYPES:
        if indices := [i for i, found_kind in enumerate(pair_types) if found_kind == kind]:
            found |= summary(indices, f"_{kind}")
    return found


def before_training(log_probs: dict[str, list[float]]) -> dict[str, list[float]]:
    """The log-probabilities of the model before training: the reference's own."""
    return {**log_probs, "chosen": log_probs["ref_chosen"], "rejected": log_probs["ref_rejected"]}
