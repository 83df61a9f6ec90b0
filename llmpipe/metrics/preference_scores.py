"""Held-out preference pairs scored by DPO's implicit reward, beta x (log pi(answer) - log pi_ref(answer)):
per pair the margin of the chosen answer's reward over the rejected one's, then the reward accuracy (the
share of pairs with a positive margin) and the mean margin, overall and by pair type.

TRL's own `rewards/accuracies` is a batch mean with a strict `>`: 0.0 at step 0, where the policy is the
reference and every margin is zero, and never a point for a tie. Here a tie counts half, so a model that
has learnt nothing scores 0.5 and pairs whose answers are equal can never raise the accuracy."""

import torch
from datasets import Dataset
from trl import DPOTrainer

from llmpipe.data.preferences import PAIR_TYPES

TIE = 1e-4  # margins this close to zero are ties: the same sums of log-probabilities up to float rounding


def sequence_log_probs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the chosen and the rejected answers of a DPOTrainer batch (the chosen
    rows first), from the fused LM head TRL puts on the model, as DPOTrainer's loss reads them."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True)
    positions = batch["completion_mask"].size(1) - 1  # prompt-learning adapters put virtual tokens in front
    return outputs.log_probs[:, -positions:].sum(dim=1).chunk(2)


def reward_margins(trainer: DPOTrainer, dataset: Dataset) -> list[float]:
    """Each pair's reward margin under the trainer's model now, in the dataset's order. `dataset` is one
    DPOTrainer prepared (tokenized; with `precompute_ref_log_probs`, holding the reference's log-probabilities);
    otherwise the reference is the trainer's: its reference model, or the model with its adapter disabled."""
    model = trainer.model
    was_training = model.training
    model.eval()
    margins = []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader(dataset):
            chosen, rejected = sequence_log_probs(model, batch)
            if "ref_chosen_logps" in batch:
                reference = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            else:
                reference = trainer.compute_ref_log_probs(trainer.ref_model or model, batch)
            margin = trainer.beta * ((chosen - reference[0]) - (rejected - reference[1]))
            margins += trainer.accelerator.gather_for_metrics(margin).tolist()
    model.train(was_training)
    return margins


def summary(margins: list[float], pair_types: list[str | None], prefix: str) -> dict[str, float]:
    """`<prefix>reward_accuracy` and `<prefix>margin` over all pairs, and `..._<pair type>` for each type."""

    def scores(selected: list[float], suffix: str) -> dict[str, float]:
        points = sum(1.0 if margin > TIE else 0.5 if margin >= -TIE else 0.0 for margin in selected)
        return {f"{prefix}reward_accuracy{suffix}": round(points / len(selected), 4),
                f"{prefix}margin{suffix}": round(sum(selected) / len(selected), 4)}

    found = scores(margins, "")
    for kind in PAIR_TYPES:
        selected = [margin for margin, found_kind in zip(margins, pair_types) if found_kind == kind]
        if selected:
            found |= scores(selected, f"_{kind}")
    return found
