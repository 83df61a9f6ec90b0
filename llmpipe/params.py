"""params.yaml: what DVC tracks across the pipeline (active recipe, accelerate config, data, adaptation methods, MLflow)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmpipe import config


@dataclass
class HubDataset:
    """A text data set on the Hugging Face Hub (needs the network): `datasets.load_dataset(path, name)`."""

    path: str
    name: str | None = None
    split: str = "train"
    column: str = "text"


@dataclass
class DataParams:
    files: list[str] = field(default_factory=list)  # paths or globs of UTF-8 text files
    hub: list[HubDataset] = field(default_factory=list)
    documents: Literal["paragraphs", "lines", "files"] = "paragraphs"  # how a file splits into documents
    normalization: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFC"
    deduplicate: bool = True
    validation_fraction: float = config.checked(0.1, lambda f: 0 < f < 1, "between 0 and 1, for example 0.1")
    seed: int = config.seed(123)


@dataclass
class MlflowParams:
    enabled: bool = True
    tracking_uri: str = ""  # empty: sqlite:///<repo root>/mlflow.db; MLFLOW_TRACKING_URI wins over both
    experiment_name: str = "llmpipe"
    log_models: bool = True  # log each trained model (mlflow.transformers) and register it as <experiment>-<stage>
    unreachable: Literal["fail", "local"] = "fail"  # a tracking server that does not answer: stop, or log to the local store


@dataclass
class HubParams:
    push: bool = False  # true: `dvc repro` pushes the trained models after evaluate (needs namespace and a token)
    namespace: str = ""  # your Hub user or organisation
    name_prefix: str = "llmpipe"  # repositories are <namespace>/<name_prefix>-<stage>
    stages: list[str] = field(default_factory=lambda: ["tokenizer", "pretrain", "classify", "sft", "lora", "lora-merged", "dpo"])
    private: bool = True
    license: str = "apache-2.0"  # of the models' cards; the data's licenses are listed in each card
    language: str = "en"

    def repo_id(self, stage: str) -> str:
        return f"{self.namespace}/{self.name_prefix}-{stage}"


@dataclass
class Params:
    recipe: str
    accelerate_config: str
    data: DataParams
    classify_data: str = "data/sms_spam/SMSSpamCollection"  # `ham|spam<TAB>text` lines
    instruction_data: str = "data/instruction-data.json"  # JSON or JSONL: instruction/input/output, or messages
    # the instruction data's entries, in the same order, each with `chosen` and `rejected` answers (dpo)
    preference_data: str = "data/instruction-data-with-preference.json"
    # the classify methods the adaptation experiment compares: names in recipes/<recipe>/adaptation.yaml `methods`
    adaptation: list[str] = field(default_factory=list)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    hub: HubParams = field(default_factory=HubParams)

    def recipe_file(self, stage: str) -> Path:
        return Path("recipes") / self.recipe / f"{stage}.yaml"


def load(path: str | Path = "params.yaml") -> Params:
    return config.load(Params, path)
