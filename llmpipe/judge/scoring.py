"""log P(candidate | prompt) for every allowed answer ("0" ... "100", each followed by EOS): one prompt at a
time (`candidate_log_probs`), or many prompts at once (`batched_candidate_log_probs`), which gives the same
numbers with far fewer token positions through the model:

- prompts about the same example share their beginning (chat preamble, instruction, reference): it runs once;
- the candidates share their digit prefixes ("4", "42", "42<EOS>"): each proper prefix is fed once, as a
  node of a trie, in the same forward pass as the prompts' remainders, with an attention mask that lets a
  node see its prompt and its own ancestors only (tree attention).
"""

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@torch.inference_mode()
def candidate_log_probs(model: PreTrainedModel, prompt_ids: list[int], candidates: list[list[int]]) -> torch.Tensor:
    """One forward pass over the prompt, then all candidates at once on copies of its KV cache
    (right-padded; padding is masked and not counted)."""
    device = model.device
    prompt = model(torch.tensor([prompt_ids], device=device), use_cache=True)
    first = torch.log_softmax(prompt.logits[0, -1].float(), dim=-1)
    cache = prompt.cache
    cache.batch_repeat_interleave(len(candidates))

    width = max(len(c) for c in candidates)
    tokens = torch.tensor([c + [0] * (width - len(c)) for c in candidates], device=device)
    real = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in candidates], device=device)
    mask = torch.cat([torch.ones(len(candidates), len(prompt_ids), dtype=real.dtype, device=device), real], dim=1)
    # Candidate token t is predicted by the logits after token t-1 (the first by the prompt's last).
    rest = torch.log_softmax(model(tokens[:, :-1], attention_mask=mask[:, :-1], cache=cache).logits.float(), -1)
    following = rest.gather(-1, tokens[:, 1:, None])[..., 0] * real[:, 1:]
    return first[tokens[:, 0]] + following.sum(dim=1)


@dataclass
class Trie:
    """The candidates' proper prefixes, each once. Node k feeds `tokens[k]` at depth `depths[k]` (1: right
    after the prompt); `sees[k, j]`: node j is node k or one of its ancestors. A candidate's log-probability
    is the sum over its tokens of log P(token | the node before it): `steps` holds, per candidate and token,
    that node + 1 (0: the prompt's last position) and `steps_token` the token (`steps_real`: not padding)."""

    tokens: torch.Tensor
    depths: torch.Tensor
    sees: torch.Tensor
    steps: torch.Tensor
    steps_token: torch.Tensor
    steps_real: torch.Tensor


def trie(candidates: list[list[int]]) -> Trie:
    nodes: dict[tuple[int, ...], int] = {}
    parents: list[int] = []
    steps = []
    for candidate in candidates:
        at = -1  # the prompt
        path = []
        for depth in range(len(candidate)):
            path.append(at + 1)
            if depth == len(candidate) - 1:
                break
            prefix = tuple(candidate[: depth + 1])
            if prefix not in nodes:
                nodes[prefix] = len(parents)
                parents.append(at)
            at = nodes[prefix]
        steps.append(path)
    sees = torch.eye(len(parents), dtype=torch.bool)
    for node, parent in enumerate(parents):
        if parent >= 0:
            sees[node] |= sees[parent]  # parents come before their children
    width = max(len(c) for c in candidates)
    return Trie(
        tokens=torch.tensor([prefix[-1] for prefix in nodes]),
        depths=torch.tensor([len(prefix) for prefix in nodes]),
        sees=sees,
        steps=torch.tensor([path + [0] * (width - len(path)) for path in steps]),
        steps_token=torch.tensor([c + [0] * (width - len(c)) for c in candidates]),
        steps_real=torch.tensor([[True] * len(c) + [False] * (width - len(c)) for c in candidates]),
    )


def common_prefix(prompts: list[tuple[int, ...]]) -> int:
    """How many leading tokens all prompts share, leaving each at least one token of its own."""
    shared = min(len(p) for p in prompts) - 1
    for i in range(shared):
        if len({p[i] for p in prompts}) > 1:
            return i
    return shared


@torch.inference_mode()
def batched_candidate_log_probs(model: PreTrainedModel, prompts: list[tuple[int, ...]], tree: Trie) -> torch.Tensor:
    """log P(candidate | prompt) for every prompt (rows) and candidate (columns), as `candidate_log_probs` gives
    one prompt at a time. Two forward passes: the shared beginning, then every prompt's remainder (left-padded,
    so each remainder ends at the same position) followed by the trie."""
    device = model.device
    shared = common_prefix(prompts)
    cache = None
    if shared:
        cache = model(torch.tensor([prompts[0][:shared]], device=device), use_cache=True, logits_to_keep=1).cache
        cache.batch_repeat_interleave(len(prompts))
    rests = [p[shared:] for p in prompts]
    width, nodes = max(len(r) for r in rests), len(tree.tokens)
    lengths = torch.tensor([len(r) for r in rests])
    pad = width - lengths  # leading padding of each row

    ids = torch.tensor([[0] * (width - len(r)) + list(r) for r in rests])
    ids = torch.cat([ids, tree.tokens.expand(len(prompts), nodes)], dim=1)
    columns = torch.arange(width)
    real = columns[None, :] >= pad[:, None]  # [rows, width]
    positions = torch.cat([
        (shared + columns[None, :] - pad[:, None]).clamp(min=shared),
        shared + lengths[:, None] + tree.depths[None, :] - 1,
    ], dim=1)

    # keys: the shared beginning | the remainder | the trie; queries: the remainder | the trie
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    own = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool)  # padding sees itself: no empty row
    remainder = torch.cat([own, torch.zeros(len(prompts), width, nodes, dtype=torch.bool)], dim=2)
    branch = torch.cat([real[:, None, :].expand(-1, nodes, -1), tree.sees.expand(len(prompts), -1, -1)], dim=2)
    allowed = torch.cat([remainder, branch], dim=1)
    allowed = torch.cat([torch.ones(len(prompts), width + nodes, shared, dtype=torch.bool), allowed], dim=2)
    mask = torch.zeros(allowed.shape, dtype=model.dtype).masked_fill(~allowed, torch.finfo(model.dtype).min)

    keep = torch.arange(width - 1, width + nodes, device=device)  # the remainder's last position, then every node
    logits = model(
        ids.to(device), attention_mask=mask[:, None].to(device), position_ids=positions.to(device),
        cache=cache, logits_to_keep=keep,
    ).logits.float()
    steps, tokens = tree.steps.to(device), tree.steps_token.to(device)
    chosen = logits[:, steps, tokens]  # [rows, candidates, tokens]: each step's logit of its token
    normaliser = torch.logsumexp(logits, dim=-1)[:, steps]
    return ((chosen - normaliser) * tree.steps_real.to(device)).sum(dim=-1).cpu()
