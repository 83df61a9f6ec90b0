"""log P(score | prompt) for every allowed score ("0" ... "100"), read from the judge's next-token
distributions, for many prompts at once. Two readings of the judge's answer (`judge.reading`):

- `first_number`: the number the answer begins with: the score's tokens, then, only where a longer score
  could follow (1 may become 10-19 or 100, 10 may become 100), a token that does not begin with a digit.
  "42" is 42 whatever comes next, so 2 of 101 scores' ends are never read: 10 trie nodes a prompt.
- `exact`: the score and then EOS, nothing else (what the `openai` backend accepts): every score's end is
  read, 101 trie nodes a prompt, about twice the work for a judge's short prompt.

Both come from one forward pass over one packed sequence with far fewer token positions than scoring each
score alone:
- prompts about the same example share their beginning (chat preamble, instruction, reference): it runs once;
- the scores share their digit prefixes ("4", "42"): each node is fed once, as a node of a trie, in the same
  forward pass as the prompts' remainders, with an attention mask that lets a node see its prompt and its own
  ancestors only (tree attention);
- the prompts are packed into one sequence rather than padded to the longest (a model's long answer beside
  four short ones would more than double the work).
"""

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Trie:
    """The nodes the scores' log-probabilities need, each once. Node k feeds `tokens[k]` at depth `depths[k]`
    (1: right after the prompt); `sees[k, j]`: node j is node k or one of its ancestors. Per score and token,
    `steps` holds the node whose distribution predicts that token, + 1 (0: the prompt's last position), and
    `steps_token` the token (`steps_real`: not padding); `ends` the node + 1 whose next token must not begin
    with a digit (`ends_read`: the reading checks this score's end)."""

    tokens: torch.Tensor
    depths: torch.Tensor
    sees: torch.Tensor
    steps: torch.Tensor
    steps_token: torch.Tensor
    steps_real: torch.Tensor
    ends: torch.Tensor
    ends_read: torch.Tensor


def trie(candidates: list[list[int]], read_end: list[bool]) -> Trie:
    """Nodes for the candidates' proper prefixes, and for a whole candidate whose end is read."""
    nodes: dict[tuple[int, ...], int] = {}
    parents: list[int] = []

    def node(prefix: tuple[int, ...]) -> int:
        """The node + 1 of a prefix (0: the empty one, the prompt), added after its parent if new."""
        if not prefix:
            return 0
        if prefix not in nodes:
            parent = node(prefix[:-1]) - 1
            nodes[prefix] = len(parents)
            parents.append(parent)
        return nodes[prefix] + 1

    steps = [[node(tuple(c[:depth])) for depth in range(len(c))] for c in candidates]
    ends = [node(tuple(c)) if read else 0 for c, read in zip(candidates, read_end)]
    sees = torch.eye(len(parents), dtype=torch.bool)
    for at, parent in enumerate(parents):
        if parent >= 0:
            sees[at] |= sees[parent]  # parents come before their children
    width = max(len(c) for c in candidates)
    return Trie(
        tokens=torch.tensor([prefix[-1] for prefix in nodes], dtype=torch.long),
        depths=torch.tensor([len(prefix) for prefix in nodes], dtype=torch.long),
        sees=sees,
        steps=torch.tensor([path + [0] * (width - len(path)) for path in steps]),
        steps_token=torch.tensor([c + [0] * (width - len(c)) for c in candidates]),
        steps_real=torch.tensor([[True] * len(c) + [False] * (width - len(c)) for c in candidates]),
        ends=torch.tensor(ends),
        ends_read=torch.tensor(read_end),
    )


def longer_score_may_follow(scores: range) -> list[bool]:
    """Per score, whether another score's digits begin with its own (1 -> 10-19 and 100; 10 -> 100)."""
    return [any(str(other).startswith(str(score)) and other != score for other in scores) for score in scores]


def score_trie(tokenizer: PreTrainedTokenizerBase, scores: range, reading: str) -> Trie:
    """The trie of `scores` as `tokenizer` writes them, for `reading` (module docstring)."""
    digits = [tokenizer(str(score), add_special_tokens=False)["input_ids"] for score in scores]
    if reading == "exact":
        return trie([d + [tokenizer.eos_token_id] for d in digits], [False] * len(digits))
    return trie(digits, longer_score_may_follow(scores))


def starting_with_digit(tokenizer: PreTrainedTokenizerBase, vocabulary_size: int) -> torch.Tensor:
    """Which token ids (of the model's possibly padded vocabulary) decode to text that begins with a digit."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    digit = torch.zeros(vocabulary_size, dtype=torch.bool)
    digit[: len(texts)] = torch.tensor([text[:1].isdigit() for text in texts])
    return digit


def common_prefix(prompts: list[tuple[int, ...]]) -> int:
    """How many leading tokens all prompts share, leaving each at least one token of its own."""
    shared = min(len(p) for p in prompts) - 1
    for i in range(shared):
        if len({p[i] for p in prompts}) > 1:
            return i
    return shared


@torch.inference_mode()
def candidate_log_probs(
    model: PreTrainedModel, prompts: list[tuple[int, ...]], tree: Trie, digit: torch.Tensor | None = None,
) -> torch.Tensor:
    """log P(candidate | prompt) for every prompt (rows) and candidate (columns), exactly as separate forward
    passes give them. One forward pass over one packed sequence, no padding: the shared beginning, then each
    prompt's remainder followed by its own copy of the trie. The attention mask lets a remainder see the
    shared beginning and itself, a node the same plus its ancestors; positions continue from the shared
    beginning in every remainder, as if each prompt ran alone. `digit`: the tokens that begin with a digit,
    for a trie that reads where scores end (`ends_read`)."""
    device = model.device
    shared = common_prefix(prompts)
    nodes = len(tree.tokens)
    ids, positions, blocks = [torch.tensor(prompts[0][:shared], dtype=torch.long)], [torch.arange(shared)], []
    at = shared
    for prompt in prompts:
        rest = torch.tensor(prompt[shared:], dtype=torch.long)
        ids += [rest, tree.tokens]
        positions += [shared + torch.arange(len(rest)), shared + len(rest) + tree.depths - 1]
        blocks.append((at, len(rest)))
        at += len(rest) + nodes

    allowed = torch.zeros(at, at, dtype=torch.bool)
    allowed[:shared, :shared] = torch.ones(shared, shared, dtype=torch.bool).tril()
    keep = []
    for start, length in blocks:
        trie_at = start + length
        allowed[start : trie_at + nodes, :shared] = True
        allowed[start:trie_at, start:trie_at] = torch.ones(length, length, dtype=torch.bool).tril()
        allowed[trie_at : trie_at + nodes, start:trie_at] = True
        allowed[trie_at : trie_at + nodes, trie_at : trie_at + nodes] = tree.sees
        keep += range(trie_at - 1, trie_at + nodes)  # the remainder's last position, then every node
    mask = torch.zeros(allowed.shape, dtype=model.dtype).masked_fill(~allowed, torch.finfo(model.dtype).min)

    logits = model(
        torch.cat(ids)[None].to(device), attention_mask=mask[None, None].to(device),
        position_ids=torch.cat(positions)[None].to(device), logits_to_keep=torch.tensor(keep, device=device),
    ).logits[0].float().view(len(prompts), 1 + nodes, -1)
    normaliser = torch.logsumexp(logits, dim=-1)  # [rows, 1 + nodes]
    steps, tokens = tree.steps.to(device), tree.steps_token.to(device)
    chosen = logits[:, steps, tokens] - normaliser[:, steps]  # [rows, candidates, tokens]
    written = (chosen * tree.steps_real.to(device)).sum(dim=-1)
    if not tree.ends_read.any():
        return written.cpu()
    # log P(the next token does not begin with a digit) = log(1 - P(digit))
    continues = torch.logsumexp(logits[..., digit.to(device)], dim=-1) - normaliser
    ended = torch.log(-torch.expm1(continues))[:, tree.ends.to(device)]
    return (written + torch.where(tree.ends_read.to(device), ended, 0.0)).cpu()
