"""Load what a stage saved (or a Hub id) with stock `from_pretrained`, failing with a message a user can act on."""

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmpipe.errors import UserError


def _not_loadable(source: str, what: str, err: Exception) -> UserError:
    if Path(source).exists():
        fix = "point to a folder a stage wrote (e.g. artifacts/pretrain), or run `make repro` first"
    else:
        fix = "no such folder; for a Hub id you need the network (and HF_HUB_OFFLINE unset)"
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"{source}: cannot load a {what} ({reason}); {fix}")


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, KeyError) as err:
        raise _not_loadable(str(source), "tokenizer", err) from None


def load_causal_lm(source: str | Path) -> PreTrainedModel:
    """Weights load from safetensors only."""
    try:
        return AutoModelForCausalLM.from_pretrained(str(source), use_safetensors=True)
    except (OSError, ValueError, KeyError) as err:
        raise _not_loadable(str(source), "causal language model", err) from None


def context_length(model: PreTrainedModel) -> int:
    """Positions the model can attend over (GPT-2 names it n_positions; most others max_position_embeddings)."""
    config = model.config
    return config.n_positions if hasattr(config, "n_positions") else config.max_position_embeddings


def parameter_counts(model) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total, "trainable_fraction": round(trainable / total, 4)}
