"""Load what a stage saved (or a Hub id) with stock `from_pretrained`, failing with a message a user can act on."""

import json
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llmpipe.errors import UserError
from llmpipe.runtime.checkpoints import digest


def _not_loadable(source: str, what: str, err: Exception) -> UserError:
    if Path(source).exists():
        fix = "point to a folder a stage wrote (artifacts/<stage>), or run `make repro` first"
    else:
        fix = "no such folder; for a Hub id you need the network (and HF_HUB_OFFLINE unset)"
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"{source}: cannot load a {what} ({reason}); {fix}")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")  # any one: a saved tokenizer


def _local(source: str | Path) -> bool:
    """A path rather than a Hub id: explicitly relative or absolute, or inside a folder that exists here
    (`artifacts/missing`, where `namespace/name` on the Hub would name no local folder)."""
    text = str(source)
    return text.startswith(("/", "./", "../", "~")) or (Path(text).parent != Path(".") and Path(text).parent.is_dir())


def load_pretrained(load: Callable, source: str | Path, what: str, **kwargs):
    """`load(source, **kwargs)` (a `from_pretrained`), with a message a user can act on if it fails
    (SafetensorError: a truncated weights file). A local path that does not exist is named at once rather
    than tried on the Hub (which retries for most of a minute without the network)."""
    if Path(source).is_file():
        raise UserError(f"{source}: is a file, not a model folder; point to a folder a stage wrote (artifacts/<stage>) or a Hub id")
    if _local(source) and not Path(source).exists():
        raise UserError(f"{source}: no such folder; point to a folder a stage wrote (artifacts/<stage>), or run `make repro` first")
    try:
        return load(str(source), **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise _not_loadable(str(source), what, err) from None


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _module_exists(model: PreTrainedModel, name: str) -> bool:
    if not name:  # a top-level tensor: no module of the model holds it
        return False
    for root in (model, model.base_model):  # checkpoint names may leave out the base model's prefix
        try:
            root.get_submodule(name)
            return True
        except AttributeError:
            pass
    return False


def load_model(
    model_class: type, source: str | Path, what: str, new_weights: tuple[str, ...] = (), dropped: tuple[str, ...] = (), **kwargs
) -> PreTrainedModel:
    """`model_class.from_pretrained(source)` from safetensors only. Weights the folder lacks (but
    `new_weights`: a head the caller adds), holds beyond what its config builds (but the modules in
    `dropped`: a head the caller replaces) or holds in other shapes would load silently as random or
    dropped layers: the config and the weights come from different runs, or another task."""
    adapter = Path(source) / "adapter_config.json"
    if adapter.is_file() and not (Path(source) / "config.json").is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        raise UserError(
            f"{source}: holds a PEFT adapter, not a whole {what}; use the merged model folder a stage wrote beside it "
            f"(artifacts/lora/merged), or the adapter's base ({base})"
        )
    model, info = load_pretrained(
        model_class.from_pretrained, source, what, use_safetensors=True, output_loading_info=True,
        ignore_mismatched_sizes=True, **kwargs,  # reported in `info` rather than raised, so they can be named
    )
    missing = sorted(key for key in info["missing_keys"] if key not in new_weights)
    # a stale buffer on a module the model has (GPT-2's old `attn.masked_bias`) is harmless; a tensor of a
    # module it lacks (a layer beyond n_layer, another task's head) means the weights are not this model's
    extra = sorted(
        key for key in info["unexpected_keys"]
        if not _module_exists(model, key.rpartition(".")[0]) and key.split(".")[0] not in dropped
    )
    mismatched = sorted(str(key[0] if isinstance(key, tuple) else key) for key in info["mismatched_keys"])
    if missing or extra or mismatched:
        found = "; ".join(
            part for part in (missing and f"missing from its weights: {_some(missing)}",
                              extra and f"in its weights but not in a {what}: {_some(extra)}",
                              mismatched and f"of another shape: {_some(mismatched)}") if part
        )
        raise UserError(
            f"{source}: its weights do not fit a {what} built from its config.json ({found}); the config and the "
            "weights come from different runs, or the folder holds another kind of model: use a folder a stage wrote for this"
        )
    return model


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer, padding with EOS when it has no pad token of its own (GPT-2's has none)."""
    folder = Path(source)
    if folder.is_dir() and any(folder.iterdir()) and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"{source}: no tokenizer in this folder ({', '.join(TOKENIZER_FILES)}); every stage saves its tokenizer "
            "beside the model: point to a folder a stage wrote (artifacts/<stage>)"
        )
    tokenizer = without_load_settings(load_pretrained(AutoTokenizer.from_pretrained, source, "tokenizer"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# How a tokenizer was loaded (HF_HUB_OFFLINE gives local_files_only), which from_pretrained keeps among the
# arguments save_pretrained writes back: the same tokenizer would be saved differently on another machine.
LOAD_SETTINGS = ("local_files_only", "is_local")


def without_load_settings(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    for key in LOAD_SETTINGS:
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def load_causal_lm(source: str | Path) -> PreTrainedModel:
    """Weights load from safetensors only."""
    return load_model(AutoModelForCausalLM, source, "causal language model")


def check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, source: str | Path) -> None:
    """A tokenizer with ids beyond the model's embedding comes from another run; generating would index past it."""
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary holds {model.config.vocab_size}; "
            "they come from different runs: use the tokenizer saved with the model (every stage saves both in its folder)"
        )


def load_classifier(source: str | Path, what: str, **kwargs) -> PreTrainedModel:
    """A sequence classifier on a causal LM's weights: the new head (`score`) is the one weight the folder may
    lack, the LM's own output layer (when not tied to the embeddings) the one it may hold beyond it."""
    return load_model(
        AutoModelForSequenceClassification, source, what, new_weights=("score.weight",), dropped=("lm_head", "embed_out"), **kwargs
    )


def label_settings(labels: list[str]) -> dict:
    """A classifier config's labels, in the order of their ids."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


def load_for_task(source: str | Path, task: str, adapter_base: str | None = None, labels: list[str] | None = None):
    """The model a `pipeline(task)` runs: a causal LM or a sequence classifier; with `adapter_base`, the
    PEFT adapter in `source` on that base (a classifier's base with `labels`: an adapter does not hold them)."""
    if adapter_base is not None:
        from peft import PeftModel

        if task == "text-classification":
            base = load_classifier(adapter_base, "base model", **(label_settings(labels) if labels else {}))
        else:
            base = load_causal_lm(adapter_base)
        return PeftModel.from_pretrained(base, str(source))
    if task == "text-classification":
        return load_model(AutoModelForSequenceClassification, source, "classifier")
    return load_causal_lm(source)


def weights_digest(source: str | Path) -> str | None:
    """sha256 of a model folder's safetensors files (None for a Hub id): which exact weights a score belongs to."""
    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    return digest(files) if files else None


def context_length(model: PreTrainedModel | PretrainedConfig) -> int:
    """Positions the model (or its config) can attend over (GPT-2 names it n_positions; most others max_position_embeddings)."""
    config = getattr(model, "config", model)
    return config.n_positions if hasattr(config, "n_positions") else config.max_position_embeddings


def parameter_counts(model) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total, "trainable_fraction": round(trainable / total, 4)}
