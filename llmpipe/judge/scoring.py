"""log P(candidate | prompt) for every allowed answer ("0" ... "100", each followed by EOS): one prompt at a
time (`candidate_log_probs`), or many prompts at once (`batched_candidate_log_probs`), which gives the same
numbers with far fewer token positions through the model:

- prompts about the same example share their beginning (chat preamble, instruction, reference): it runs once;
- the candidates share their digit prefixes ("4", "42", "42<EOS>"): each proper prefix is fed once, as a
  node of a trie, in the same forward pass as the prompts' remainders, with an attention mask that lets a
  node see its prompt and its own ancestors only (tree attention);
- the prompts are packed into one sequence rather than padded to the longest (a model's long answer beside
  four short ones would more than double the work).
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
    one prompt at a time. One forward pass over one packed sequence, no padding: the shared beginning, then
    each prompt's remainder followed by its own copy of the trie. The attention mask lets a remainder see the
    shared beginning and itself, a node the same plus its ancestors; positions continue from the shared
    beginning in every remainder, as if each prompt ran alone."""
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
    steps, tokens = tree.steps.to(device), tree.steps_token.to(device)
    chosen = logits[:, steps, tokens]  # [rows, candidates, tokens]: each step's logit of its token
    normaliser = torch.logsumexp(logits, dim=-1)[:, steps]
    return ((chosen - normaliser) * tree.steps_real.to(device)).sum(dim=-1).cpu()
