"""Model cards (`README.md` with YAML metadata) for what the stages save, made with huggingface_hub's
`ModelCard`/`ModelCardData`: what the model is, how to load it, what it scored, what it was trained on
and with which settings. The same card goes into the artifact folder and, refreshed, to the Hub."""

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from llmpipe.config import flatten
from llmpipe.data import instructions, spam
from llmpipe.errors import UserError
from llmpipe.runtime import redact, throughput

SOURCES_FILE = Path("data/SOURCES.md")


@dataclass(frozen=True)
class Kind:
    """What an artifact is, for the Hub: its pipeline tag, library and what the book calls it."""

    title: str
    pipeline_tag: str | None
    library_name: str
    data: tuple[str, ...]  # which params data sets trained it (and the models it started from)


# titles name the architecture (`{arch}`: "`gpt2` model", "`llama` model")
KINDS = {
    "tokenizer": Kind("byte-level BPE tokenizer (book ch2)", None, "transformers", ("text",)),
    "pretrain": Kind("a {arch} pretrained from scratch (book ch4-5)", "text-generation", "transformers", ("text",)),
    "classify": Kind("a spam classifier fine-tuned from a {arch} (book ch6)", "text-classification", "transformers", ("text", "spam")),
    "classify-adapter": Kind("a spam classifier as a PEFT adapter (prompt or p-tuning) on a {arch} (book ch6)", "text-classification",
                             "peft", ("text", "spam")),
    "sft": Kind("an instruction-tuned {arch} (book ch7)", "text-generation", "transformers", ("text", "instructions")),
    "lora": Kind("LoRA adapter for instruction following (book appendix E)", "text-generation", "peft", ("text", "instructions")),
    "lora-merged": Kind("a {arch} with its LoRA adapter merged in (book appendix E)", "text-generation", "transformers", ("text", "instructions")),
    "dpo": Kind("a {arch} preference-tuned with DPO after instruction tuning (book ch7 bonus)", "text-generation", "transformers",
                ("text", "instructions", "preferences")),
    "dpo-adapter": Kind("LoRA adapter preference-tuned with DPO after instruction tuning (book ch7 bonus)", "text-generation", "peft",
                        ("text", "instructions", "preferences")),
    "dpo-merged": Kind("a {arch} with its DPO-tuned LoRA adapter merged in (book ch7 bonus)", "text-generation", "transformers",
                       ("text", "instructions", "preferences")),
}

PREFERENCE_TUNED = ("dpo", "dpo-adapter", "dpo-merged")

# Timings vary from run to run: in the card they would make every run's folder differ (DVC, the Hub)
TIMINGS = {*throughput.MEASURED, "train_seconds", "seconds"}

EXAMPLE_INSTRUCTION = {"instruction": "Give a synonym for 'happy'.", "input": ""}
SPAM_EXAMPLE = "You are a winner! Reply WIN now to claim your free prize."


@dataclass(frozen=True)
class DataSource:
    path: str
    origin: str
    license: str


@dataclass
class CardFacts:
    """What a card says about how an artifact was made; kept in the card's metadata (`llmpipe:`) so
    `llmpipe push` re-renders the card for the Hub from the run that made the folder."""

    artifact: str  # a key of KINDS
    recipe: str
    settings: dict[str, Any]  # the recipe, flattened
    metrics: dict[str, Any]  # the stage's metrics JSON
    data: list[str]  # local files that trained it (and the models it started from)
    hub_data: list[str]  # Hub data set ids
    base_model: str | None = None
    prompt_format: str = "alpaca"
    model_type: str | None = None  # the architecture (`config.model_type`: gpt2, llama); None for a tokenizer


def facts(job, artifact: str, metrics: dict[str, Any], base_model: str | None = None, prompt_format: str = "alpaca",
          model_type: str | None = None) -> CardFacts:
    """The facts of `job` (a `stage.Stage`) about the artifact it saved."""
    params = job.params
    files = {"text": params.data.files, "spam": [params.classify_data], "instructions": [params.instruction_data],
             "preferences": [params.preference_data]}
    return CardFacts(
        artifact=artifact,
        recipe=job.recipe_path.parent.name,
        settings={key: redact.setting(key, value) for key, value in flatten(job.recipe).items() if value is not None},
        metrics={key: value for key, value in metrics.items() if isinstance(value, (int, float, str)) and key not in TIMINGS},
        data=[path for name in KINDS[artifact].data for path in files[name]],
        hub_data=[dataset.path for dataset in params.data.hub],
        base_model=base_model,
        prompt_format=prompt_format,
        model_type=model_type,
    )


def data_sources(files: list[str], sources_file: Path = SOURCES_FILE) -> list[DataSource]:
    """Each local data file with its origin and license from data/SOURCES.md."""
    recorded = {}
    if sources_file.is_file():
        for line in sources_file.read_text(encoding="utf-8").splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) >= 3 and cells[0].startswith("`"):
                recorded[cells[0].strip("`")] = (cells[1], cells[2])
    found = []
    for path in files:
        origin, license_ = recorded.get(path.removeprefix(f"{sources_file.parent}/"), ("your data (not in data/SOURCES.md)", "unknown"))
        found.append(DataSource(path, origin, license_))
    return found


def eval_results(facts: CardFacts, evaluation: dict[str, Any] | None) -> list[EvalResult]:
    """The `model-index` entries: the stage's own held-out scores and, for instruction models, the judge's
    (`evaluation`: this model's entry of the evaluate stage's metrics, with `judge` and `judge_model`)."""
    metrics, artifact = facts.metrics, facts.artifact
    task_data = Path(facts.data[-1]).name if facts.data else "data"  # what the stage itself trained on
    if artifact == "pretrain":
        task_data = ", ".join(Path(path).name for path in facts.data) or "text corpus"
    results = []

    def add(task: str, split: str, metric: str, label: str, key: str, scores: dict | None, config: str | None = None):
        if scores and scores.get(key) is not None:
            results.append(EvalResult(
                task_type=task, dataset_type=re.sub(r"[^a-z0-9]+", "-", Path(task_data).stem.lower()), dataset_name=task_data,
                dataset_split=split, metric_type=metric, metric_name=label, metric_value=scores[key], metric_config=config,
            ))

    if artifact == "pretrain":
        add("text-generation", "validation", "loss", "Validation loss", "val_loss", metrics)
        add("text-generation", "validation", "perplexity", "Validation perplexity", "val_perplexity", metrics)
    elif artifact in ("classify", "classify-adapter"):
        add("text-classification", "test", "accuracy", "Test accuracy", "test_accuracy", metrics)
        add("text-classification", "test", "f1", "Test F1", "test_f1", metrics)
    elif artifact in ("sft", "lora", "lora-merged", *PREFERENCE_TUNED):
        for split, name in (("validation", "val"), ("test", "test")) if artifact in PREFERENCE_TUNED else ():
            add("text-generation", split, "accuracy", "Reward accuracy (held-out pairs; ties count half)", f"{name}_reward_accuracy", metrics)
            add("text-generation", split, "reward_margin", "Reward margin (held-out pairs)", f"{name}_margin", metrics)
            add("text-generation", split, "loss", "DPO loss (held-out pairs)", f"{name}_dpo_loss", metrics)
        add("text-generation", "validation", "loss", "Validation loss (responses)", "val_loss", metrics)
        judge = f"{evaluation['judge']} ({evaluation['judge_model']})" if evaluation else None
        led = (evaluation or {}).get("headline_agreement")
        # (measure, metric type, label, key): the measure that agrees best with GPT-4 first, naming that agreement
        judged = [("judge", "judge_score", "Judge score (0-100)", "judge_mean"), ("rouge_l", "rouge", "ROUGE-L", "rouge_l_mean")]
        if led:
            if led["measure"] not in ("judge", "rouge_l"):
                judged.append((led["measure"], led["measure"], led["measure"], "headline_mean"))
            judged.sort(key=lambda row: row[0] != led["measure"])
        for measure, metric, label, key in judged:
            if led and measure == led["measure"]:
                label += f" (Spearman {led['spearman_with_gpt4']:.2f} with GPT-4 on the book's held-out ratings)"
            add("text-generation", "test", metric, label, key, evaluation, config=None if measure == "rouge_l" else judge)
    return results


def usage(artifact: str, model_id: str, prompt_format: str = "alpaca", revision: str | None = None) -> str:
    """A snippet that runs as is (a local folder path or a Hub id both work as `model_id`; `revision`, a
    Hub branch)."""
    source = repr(model_id) + (f", revision={revision!r}" if revision else "")
    if artifact == "tokenizer":
        return (
            "from transformers import AutoTokenizer\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained({source})\n"
            'print(tokenizer.tokenize("Every effort moves you"))\n'
        )
    if artifact == "classify":
        return (
            "from transformers import pipeline\n\n"
            f"classifier = pipeline(\"text-classification\", model={source})\n"
            f"print(classifier({SPAM_EXAMPLE!r}))\n"
        )
    if artifact == "classify-adapter":  # the adapter holds no labels: its base gets them as it loads
        return (
            "from peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer, pipeline\n\n"
            f"labels = {spam.LABELS!r}\n"
            f"model = AutoPeftModelForSequenceClassification.from_pretrained(\n    {source}, num_labels=len(labels),\n"
            "    id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},\n)\n"
            f"classifier = pipeline(\"text-classification\", model=model, tokenizer=AutoTokenizer.from_pretrained({source}))\n"
            f"print(classifier({SPAM_EXAMPLE!r}))\n"
        )
    chat = artifact != "pretrain" and prompt_format == "chat"  # messages: the tokenizer's chat template applies
    if artifact == "pretrain":
        prompt: str | list = "Every effort moves you"
    else:
        prompt = [{"role": "user", "content": EXAMPLE_INSTRUCTION["instruction"]}] if chat else instructions.alpaca_prompt(EXAMPLE_INSTRUCTION)
    if artifact in ("lora", "dpo-adapter"):
        encode = (
            f"tokenizer.apply_chat_template({prompt!r}, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)"
            if chat else f"tokenizer({prompt!r}, return_tensors=\"pt\")"
        )
        return (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained({source})  # the base model named in adapter_config.json\n"
            f"tokenizer = AutoTokenizer.from_pretrained({source})\n"
            f"inputs = {encode}\n"
            "output = model.generate(**inputs, max_new_tokens=20, do_sample=False)\n"
            'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
        )
    answer = '[0]["generated_text"][-1]["content"]' if chat else '[0]["generated_text"]'
    return (
        "from transformers import pipeline\n\n"
        f"generator = pipeline(\"text-generation\", model={source})\n"
        f"print(generator({prompt!r}, max_new_tokens=20, do_sample=False){answer})\n"
    )


def title(facts: CardFacts) -> str:
    """What the artifact is; one that started from other weights (`init_from`) says so."""
    if facts.base_model and facts.artifact == "tokenizer":
        return f"the tokenizer of {facts.base_model}, taken as is (book ch2)"
    if facts.base_model and facts.artifact == "pretrain" and not facts.metrics.get("steps"):
        return f"the weights of {facts.base_model}, taken as they are and scored (book ch5.5)"
    if facts.base_model and facts.artifact == "pretrain":
        return f"a causal LM continued from the weights of {facts.base_model} (book ch5.5, appendix D)"
    return KINDS[facts.artifact].title.format(arch=f"`{facts.model_type}` model" if facts.model_type else "model")


def _table(header: tuple[str, str], rows: list[tuple[Any, Any]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value)).replace("|", "\\|")


def model_card(
    facts: CardFacts, model_id: str, license: str, language: str, evaluation: dict[str, Any] | None = None,
    hub_base_model: str | None = None, on_hub: bool = False, revision: str | None = None,
) -> ModelCard:
    """The card of one artifact, loadable as `model_id`: its folder, or (`on_hub`) its Hub repository
    (at `revision`), whose metadata takes only Hub ids, so the base is `hub_base_model` and a local base
    folder with no Hub id is named in the text alone."""
    kind = KINDS[facts.artifact]
    base = hub_base_model if on_hub else facts.base_model
    results = eval_results(facts, evaluation)
    data = ModelCardData(
        model_name=Path(model_id).name,
        license=license,
        language=language,
        library_name=kind.library_name,
        pipeline_tag=kind.pipeline_tag,
        tags=["llmpipe", *filter(None, [facts.model_type]), facts.artifact, *{"lora": ["lora", "peft"], "lora-merged": ["lora"], "classify-adapter": ["peft"],
                                                                              "dpo-adapter": ["lora", "peft"], "dpo-merged": ["lora"]}.get(facts.artifact, [])],
        base_model=base,
        datasets=facts.hub_data or None,
        eval_results=results or None,
        llmpipe=asdict(facts),
    )
    stage = facts.artifact.split("-")[0]
    sections = [
        f"# {Path(model_id).name}\n\nMade by the `{stage}` stage of llmpipe (recipe `{facts.recipe}`): {title(facts)}.",
        f"## Usage\n\n```python\n{usage(facts.artifact, model_id, facts.prompt_format, revision)}```",
    ]
    if base or facts.base_model:
        named = f"`{base}`" if base else f"`{facts.base_model}`, a local folder (not on the Hub)"
        sections.append(f"## Base model\n\n{named}")
    if results:
        rows = [(f"{r.metric_name} ({r.dataset_name}, {r.dataset_split})", r.metric_value) for r in results]
        judged = [r.metric_config for r in results if r.metric_config]
        note = f"\n\nJudged by {judged[0]}." if judged else ""
        if led := (evaluation or {}).get("headline_agreement"):
            note += (f" The first figure leads because it agrees best with GPT-4 on the book's held-out rated answers "
                     f"(`llmpipe meta-evaluate`: Spearman {led['spearman_with_gpt4']:.2f}); trust it over the judge's score.")
        if judged and (trust := (evaluation or {}).get("judge_validity")):
            note += (f" How far to trust it: scoring each test reference against a mismatched one, AUC {trust['auc']}, "
                     f"paired win rate {trust['win_rate']:.0%} ({trust['pairs']} pairs; 0.5 is chance); "
                     f"length bias (Spearman, score vs words) {trust['length_bias']}.")
        sections.append("## Evaluation\n\n" + _table(("Metric", "Value"), rows) + note)
    sources = []
    if not (facts.artifact == "tokenizer" and facts.base_model):  # a copied tokenizer was trained on nothing here
        sources = [(f"`{s.path}`", f"{s.origin}; license: {s.license}") for s in data_sources(facts.data)]
        sources += [(f"`{d}` (Hugging Face Hub)", "see the data set's card") for d in facts.hub_data]
    if sources:
        sections.append("## Training data\n\n" + _table(("Data", "Source and license"), sources))
    if facts.settings:
        rows = [(f"`{key}`", value) for key, value in sorted(facts.settings.items())]
        sections.append(f"## Training settings (recipe `{facts.recipe}`)\n\n" + _table(("Setting", "Value"), rows))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def judge_card(origin: str, how: str, license: str, folder: str) -> ModelCard:
    """The card of the judge the `judge-model` stage writes; `origin` (in the metadata too) is what the
    evaluate stage names as its judge."""
    data = ModelCardData(
        model_name=Path(folder).name, license=license, library_name="transformers", pipeline_tag="text-generation",
        base_model=origin if re.fullmatch(r"[\w.-]+/[\w.-]+", origin) and not Path(origin).exists() else None,
        tags=["llmpipe", "judge"], origin=origin,
    )
    text = (
        f"# {Path(folder).name}\n\nThe judge of llmpipe's `evaluate` stage (book ch7.8), written by the `judge-model` stage: "
        f"{origin}, {how}, saved as float32 safetensors with its tokenizer and chat template.\n\n"
        f"## License\n\n{license}: the license of {origin}.\n\n"
        f"## Usage\n\n```python\n{usage('sft', folder, 'chat')}```\n"
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def write(folder: str | Path, card: ModelCard) -> None:
    """The card as the folder's README.md (replacing the one PEFT writes with an empty base model)."""
    card.save(Path(folder) / "README.md")


def load_facts(folder: str | Path) -> CardFacts:
    """The facts a stage wrote into the card of `folder`."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        raise UserError(f"{path}: no model card; this folder was not written by an llmpipe stage (run `dvc repro`)")
    try:
        recorded = ModelCard.load(path).data.to_dict().get("llmpipe")
    except yaml.YAMLError as err:
        raise UserError(f"{path}: the card's metadata is not valid YAML ({str(err).splitlines()[0]}); run the stage again") from None
    try:
        return CardFacts(**recorded)
    except TypeError:  # none, or written by another llmpipe version
        raise UserError(f"{path}: the card has no `llmpipe` metadata this version reads; run the stage again "
                        "(`dvc repro -f -s STAGE`)") from None
