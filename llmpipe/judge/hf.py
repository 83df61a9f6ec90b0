"""The `hf` judge: any causal LM, local or from the Hub. Rather than parse what it writes, read how likely
it finds each allowed answer ("0" ... "100"; `judge.reading` says how an answer ends, scoring.py) and report
the expectation (G-Eval style): always a number, with the distribution's confidence beside it.

Beside the score, each verdict carries the judge model's `similarity` of the response to the reference: the
cosine of their mean last hidden states, each text read alone. On the book's rated answers it agrees with
GPT-4 far better than the model's own score does (docs/meta-evaluation.md), at a fraction of its cost."""

from pathlib import Path

import torch
from huggingface_hub import ModelCard
from tqdm.auto import tqdm

from llmpipe import artifacts
from llmpipe.data import instructions
from llmpipe.errors import UserError
from llmpipe.judge import base, scoring


class HfJudge:
    def __init__(self, settings: base.JudgeSettings, device: str = "cpu", batch_size: int = 8):
        self.identity = f"hf:{settings.model} (reading: {settings.reading})"
        self.description = describe(settings.model)
        self.batch_size = batch_size
        self.tokenizer = artifacts.load_tokenizer(settings.model)
        if settings.prompt_format == "chat" and not self.tokenizer.chat_template:
            raise UserError(
                f"judge.model {settings.model}: its tokenizer has no chat template, but `judge.prompt_format` is chat; "
                "use an instruct model that has one, or set `judge.prompt_format: auto` (or alpaca)"
            )
        self.model = artifacts.load_causal_lm(settings.model).to(device).eval()
        artifacts.check_vocabulary(self.model, self.tokenizer, settings.model)
        self.chat = settings.prompt_format == "chat" or (
            settings.prompt_format == "auto" and bool(self.tokenizer.chat_template)
        )
        self.trie = scoring.score_trie(self.tokenizer, base.SCORES, settings.reading)
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        # needed only where the trie reads a score's end by the next token's first character (`first_number`)
        self.digit = scoring.starting_with_digit(self.tokenizer, vocabulary) if self.trie.ends_read.any() else None

    def prompt_ids(self, request: str, reference: str, response: str) -> tuple[tuple[int, ...], int]:
        """The prompt's tokens and how many were dropped from its start: a prompt longer than the judge's
        context keeps its end (the response and the question)."""
        text = base.prompt(request, reference, response)
        if self.chat:
            templated = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            ids = self.tokenizer(templated, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(instructions.alpaca_prompt({"instruction": text}))["input_ids"]
        room = artifacts.context_length(self.model) - int(self.trie.depths.max())  # the deepest node follows the prompt
        dropped = max(0, len(ids) - room)
        return tuple(ids[dropped:]), dropped

    def __call__(self, request: str, reference: str, response: str) -> base.Verdict:
        return self.judge_many([(request, reference, response)])[0]

    def judge_many(self, examples: list[tuple[str, str, str]]) -> list[base.Verdict]:
        """The verdicts of `(request, reference, response)` examples, each as `self(*example)` gives it, faster:
        a prompt that repeats is scored once, and the answers to one request and reference (every model's, the
        validity checks') are scored together on their shared beginning, `batch_size` at a time."""
        prompts = [self.prompt_ids(*example) for example in examples]
        groups: dict[tuple[str, str], dict[tuple[int, ...], None]] = {}
        for (request, reference, _), (ids, _) in zip(examples, prompts):
            groups.setdefault((request, reference), {})[ids] = None
        log_probs = {}
        for group in tqdm(groups.values(), desc=f"judging ({self.identity})", unit="example", disable=len(groups) < 2):
            unique = [ids for ids in group if ids not in log_probs]
            for start in range(0, len(unique), self.batch_size):
                chunk = unique[start : start + self.batch_size]
                log_probs |= zip(chunk, scoring.candidate_log_probs(self.model, chunk, self.trie, self.digit))
        meaning = self.embeddings([text for _, reference, response in examples for text in (reference, response)])
        return [
            verdict(log_probs[ids], dropped, round(float(torch.cosine_similarity(meaning[reference], meaning[response], dim=0)), 4))
            for (_, reference, response), (ids, dropped) in zip(examples, prompts)
        ]

    @torch.inference_mode()
    def embeddings(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Each distinct text's mean last hidden state in the judge model, the text read alone (no prompt);
        texts of like length are batched together, so little padding is computed."""
        found = {}
        unique = sorted(set(texts), key=len)
        limit = artifacts.context_length(self.model)
        for start in range(0, len(unique), 4 * self.batch_size):
            chunk = unique[start : start + 4 * self.batch_size]
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                                   max_length=limit, add_special_tokens=False).to(self.model.device)
            hidden = self.model.base_model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"][..., None].float()
            found |= zip(chunk, ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())  # an empty text: zeros
        return found


def describe(source: str) -> str:
    """What the judge is: the origin its folder's model card names (the judge-model stage writes one), else its source."""
    card = Path(source) / "README.md"
    origin = ModelCard.load(card).data.to_dict().get("origin") if card.is_file() else None
    return f"{origin} ({source})" if origin else source


def verdict(log_probs: torch.Tensor, dropped_tokens: int = 0, similarity: float | None = None) -> base.Verdict:
    """The expected score under the judge's distribution renormalised over the allowed scores (and the
    response's `similarity` to the reference, where measured)."""
    probs = torch.softmax(log_probs.double(), dim=0)
    scores = torch.tensor(list(base.SCORES), dtype=torch.float64)
    expected = float((probs * scores).sum())
    mode = int(probs.argmax())
    return base.Verdict(
        score=expected,
        detail={
            "mode": base.SCORES[mode],
            "p_mode": round(float(probs[mode]), 4),
            "std": round(float(((scores - expected) ** 2 * probs).sum().sqrt()), 3),
            # how much of its probability the judge put on answering with a score at all
            "mass_on_scores": float(torch.logsumexp(log_probs.double(), 0).exp()),
            "prompt_tokens_dropped": dropped_tokens,
        } | ({} if similarity is None else {"similarity": similarity}),
    )
