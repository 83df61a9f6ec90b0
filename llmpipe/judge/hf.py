"""The `hf` judge: any causal LM, local or from the Hub. Rather than parse what it writes, read how likely
it finds each allowed answer ("0" ... "100", each followed by EOS) and report the expectation
(G-Eval style): always a number, with the distribution's confidence beside it."""

import torch
from transformers import PreTrainedModel

from llmpipe import artifacts
from llmpipe.data import instructions
from llmpipe.judge import base


class HfJudge:
    def __init__(self, settings: base.JudgeSettings, device: str = "cpu"):
        self.identity = f"hf:{settings.model}"
        self.tokenizer = artifacts.load_tokenizer(settings.model)
        self.model = artifacts.load_causal_lm(settings.model).to(device).eval()
        artifacts.check_vocabulary(self.model, self.tokenizer, settings.model)
        self.chat = settings.prompt_format == "chat" or (
            settings.prompt_format == "auto" and bool(self.tokenizer.chat_template)
        )
        self.candidates = [
            self.tokenizer(str(score), add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            for score in base.SCORES
        ]

    def prompt_ids(self, request: str, reference: str, response: str) -> list[int]:
        text = base.prompt(request, reference, response)
        if self.chat:
            templated = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(templated, add_special_tokens=False)["input_ids"]
        return self.tokenizer(instructions.alpaca_prompt({"instruction": text}))["input_ids"]

    def __call__(self, request: str, reference: str, response: str) -> base.Verdict:
        ids = self.prompt_ids(request, reference, response)
        # A prompt longer than the judge's context keeps its end: the response and the question.
        room = artifacts.context_length(self.model) - max(len(c) for c in self.candidates)
        dropped = max(0, len(ids) - room)
        log_probs = candidate_log_probs(self.model, ids[dropped:], self.candidates)
        return verdict(log_probs, dropped)


def verdict(log_probs: torch.Tensor, dropped_tokens: int = 0) -> base.Verdict:
    """The expected score under the judge's distribution renormalised over the allowed scores."""
    probs = torch.softmax(log_probs.double(), dim=0)
    scores = torch.tensor(list(base.SCORES), dtype=torch.float64)
    expected = float((probs * scores).sum())
    mode = int(probs.argmax())
    return base.Verdict(
        score=round(expected, 3),
        detail={
            "mode": base.SCORES[mode],
            "p_mode": round(float(probs[mode]), 4),
            "std": round(float(((scores - expected) ** 2 * probs).sum().sqrt()), 3),
            # how much of its probability the judge put on answering with a score at all
            "mass_on_scores": float(torch.logsumexp(log_probs.double(), 0).exp()),
            "prompt_tokens_dropped": dropped_tokens,
        },
    )


@torch.inference_mode()
def candidate_log_probs(model: PreTrainedModel, prompt_ids: list[int], candidates: list[list[int]]) -> torch.Tensor:
    """log P(candidate | prompt) for every candidate: one forward pass over the prompt, then all
    candidates at once on copies of its KV cache (right-padded; padding is masked and not counted)."""
    device = model.device
    prompt = model(torch.tensor([prompt_ids], device=device), use_cache=True)
    first = torch.log_softmax(prompt.logits[0, -1].float(), dim=-1)
    cache = prompt.past_key_values
    cache.batch_repeat_interleave(len(candidates))

    width = max(len(c) for c in candidates)
    tokens = torch.tensor([c + [0] * (width - len(c)) for c in candidates], device=device)
    real = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in candidates], device=device)
    mask = torch.cat([torch.ones(len(candidates), len(prompt_ids), dtype=real.dtype, device=device), real], dim=1)
    # Candidate token t is predicted by the logits after token t-1 (the first by the prompt's last).
    rest = torch.log_softmax(model(tokens[:, :-1], attention_mask=mask[:, :-1], past_key_values=cache).logits.float(), -1)
    following = rest.gather(-1, tokens[:, 1:, None])[..., 0] * real[:, 1:]
    return first[tokens[:, 0]] + following.sum(dim=1)

