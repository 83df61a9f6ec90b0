"""The models the pipeline wrote, named by the stage that wrote them, each loaded once on first use. A folder
that is missing or does not load is a `Choice` with the reason, never an exception in the page."""

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers import Pipeline, PreTrainedModel, PreTrainedTokenizerBase

from llmpipe import artifacts
from llmpipe.commands.classify_text import load_classifier
from llmpipe.data import instructions
from llmpipe.errors import UserError
from llmpipe.hub import cards
from llmpipe.judge.backends import load as load_judge
from llmpipe.judge.base import Judge, JudgeSettings

# name -> folder under the artifacts folder, and the stage that writes it
INSTRUCTION_TUNED = {"sft": ("sft", "sft"), "lora (merged)": ("lora/merged", "lora")}
ONLY_WHEN_WRITTEN = {"dpo": ("dpo", "dpo")}  # stages a recipe may leave out: offered once their folder exists
PRETRAINED = {"pretrain": ("pretrain", "pretrain")}
CLASSIFIERS = {"classify": ("classify", "classify")}
ADAPTATION = "adaptation"  # one classifier folder per adaptation method (the `adapt@<method>` stages)


@dataclass(frozen=True)
class Choice:
    """A model a tab offers: its name, its folder, and why it cannot be used if it cannot (None: it can)."""

    name: str
    folder: str
    unavailable: str | None = None


def choice(name: str, folder: Path, stage: str) -> Choice:
    if not folder.is_dir():
        return Choice(name, str(folder), f"no folder {folder}: run `dvc repro` (the {stage} stage writes it)")
    return Choice(name, str(folder))


@dataclass
class LanguageModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompt_format: str  # alpaca: one instruction, one answer (the book's); chat: turns through the chat template

    @property
    def multi_turn(self) -> bool:
        return self.prompt_format == "chat"


def prompt_format(folder: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The format the model was tuned with, as its stage recorded it in the card; for a folder without one
    (a model from elsewhere), its chat template if it has one."""
    try:
        return cards.load_facts(folder).prompt_format
    except UserError:
        return "chat" if tokenizer.chat_template else "alpaca"


def load_language_model(folder: str) -> LanguageModel:
    tokenizer = artifacts.load_tokenizer(folder)
    model = artifacts.load_causal_lm(folder).eval()
    artifacts.check_vocabulary(model, tokenizer, folder)
    model.generation_config.pad_token_id = tokenizer.pad_token_id  # no "setting pad_token_id" warning per answer
    found = prompt_format(folder, tokenizer)
    instructions.prepare_tokenizer(tokenizer, found)
    return LanguageModel(model, tokenizer, found)


class Models:
    """What the app offers, from the artifacts folder: instruction-tuned models (Chat, Compare; `extra` adds
    named folders such as another recipe's sft), pretrained models (Generate), classifiers (Classify), and
    the judge (Compare's scores). Loaded models are kept; a folder that failed to load keeps its reason."""

    def __init__(self, root: str | Path = "artifacts", judge: str | None = None, extra: dict[str, str] | None = None):
        root = Path(root)
        judge = judge or root / "judge"
        self.instruction_tuned = [choice(name, root / folder, stage) for name, (folder, stage) in INSTRUCTION_TUNED.items()]
        self.instruction_tuned += [choice(name, root / folder, stage) for name, (folder, stage) in ONLY_WHEN_WRITTEN.items()
                                   if (root / folder).is_dir()]
        self.instruction_tuned += [choice(name, Path(folder), "sft") for name, folder in (extra or {}).items()]
        self.pretrained = [choice(name, root / folder, stage) for name, (folder, stage) in PRETRAINED.items()]
        self.classifiers = [choice(name, root / folder, stage) for name, (folder, stage) in CLASSIFIERS.items()]
        self.classifiers += [Choice(f"{ADAPTATION}/{path.name}", str(path)) for path in sorted((root / ADAPTATION).glob("*"))
                             if path.is_dir()]
        self.judge_choice = choice("judge", Path(judge), "judge-model")
        self._loaded: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def _get(self, kind: str, target: Choice, load: Callable[[str], object]):
        if target.unavailable:
            raise UserError(f"{target.name} is unavailable: {target.unavailable}")
        with self._lock:  # one load per folder, even when two requests ask at once
            key = (kind, target.folder)
            if key not in self._loaded:
                try:
                    self._loaded[key] = load(target.folder)
                except UserError as err:
                    self._loaded[key] = err
            found = self._loaded[key]
        if isinstance(found, UserError):
            raise UserError(f"{target.name} is unavailable: {found}")
        return found

    def find(self, offered: list[Choice], name: str) -> Choice:
        for candidate in offered:
            if candidate.name == name:
                return candidate
        raise UserError(f"no model named {name!r}; pick one of {', '.join(c.name for c in offered)}")

    def language_model(self, name: str) -> LanguageModel:
        return self._get("causal-lm", self.find(self.instruction_tuned + self.pretrained, name), load_language_model)

    def classifier(self, name: str) -> Pipeline:
        return self._get("classifier", self.find(self.classifiers, name), load_classifier)

    def judge(self) -> Judge:
        return self._get("judge", self.judge_choice, lambda folder: load_judge(JudgeSettings(backend="hf", model=folder)))

    def status(self, name: str, kind: str) -> str:
        """A line for the page on the model `name` (`kind`: chat, generate or classify), loading it: what it is,
        or why it is unavailable."""
        try:
            if kind == "classify":
                return f"**{name}**: {describe(self.classifier(name).model)}"
            loaded = self.language_model(name)
        except UserError as err:
            return f"⚠️ {err}"
        turns = "multi-turn (its chat template)" if loaded.multi_turn else "one message at a time (the Alpaca prompt, as the book)"
        return f"**{name}**: {describe(loaded.model)}" + (f"; {turns}" if kind == "chat" else "")


def describe(model) -> str:
    counts = artifacts.parameter_counts(model)
    return f"{type(model).__name__}, {counts['total_parameters'] / 1e6:.1f}M parameters, context {artifacts.context_length(model)}"
