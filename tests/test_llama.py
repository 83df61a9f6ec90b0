"""The stages on another architecture than GPT-2: a tiny Llama built from config, with a ChatML chat template
and `<|im_end|>` as EOS (SmolLM2's layout), runs classify (last_block and LoRA), sft and lora, and what they
save reloads with stock `pipeline()` and `AutoPeftModelForCausalLM`."""

import copy
import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM
from transformers import LlamaConfig, LlamaForCausalLM, pipeline

from llmpipe import cli
from llmpipe.stages.classify import load_classifier, select_trainable
from tests.conftest import assert_refused

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def llama(tokenizer, tmp_path_factory):
    """A 2-layer Llama and its chat tokenizer, saved as a model folder."""
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat_tokenizer.eos_token = chat_tokenizer.pad_token = "<|im_end|>"
    chat_tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(chat_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=chat_tokenizer.bos_token_id, eos_token_id=chat_tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("llama") / "base"
    LlamaForCausalLM(config).save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def chat_recipes(inside, tmp_path):
    """The test recipes with `prompt_format: chat` in their instructions.yaml."""
    folder = shutil.copytree(inside / "recipes/test", tmp_path / "recipes")
    (folder / "instructions.yaml").write_text((folder / "instructions.yaml").read_text().replace("alpaca", "chat"))
    return folder


def run_stage(stage: str, recipes, llama, tmp_path, *overrides: str) -> tuple[int, dict]:
    out = tmp_path / stage
    code = cli.main([stage, "--recipe", str(recipes / f"{stage}.yaml"), "--base", str(llama), "--output", str(out),
                     "--metrics", str(tmp_path / f"{stage}.json"), "--checkpoints", str(tmp_path / f"checkpoints-{stage}"),
                     *[arg for override in overrides for arg in ("--set", override)]])
    metrics = json.loads((tmp_path / f"{stage}.json").read_text()) if code == 0 else {}
    return code, metrics


def test_last_block_is_the_last_decoder_layer_and_the_final_norm(llama):
    model = select_trainable(load_classifier(str(llama), {}), "last_block", {})
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if name.startswith(("score.", "model.layers.1.", "model.norm."))}


@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["last_block", "lora"])
def test_classify_trains_a_llama_and_the_classifier_reloads_with_pipeline(chat_recipes, llama, tmp_path, trainable):
    code, metrics = run_stage("classify", chat_recipes, llama, tmp_path, f"trainable={trainable}", "model.attention_dropout=0.0")
    assert code == 0
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]
    classifier = pipeline("text-classification", model=str(tmp_path / "classify"))
    assert classifier("WINNER!! Claim your free prize now")[0]["label"] in ("ham", "spam")


def test_bitfit_on_a_model_without_biases_is_refused(chat_recipes, llama, tmp_path, capsys):
    code, _ = run_stage("classify", chat_recipes, llama, tmp_path, "trainable=bitfit")
    assert_refused(code, capsys.readouterr().err, "bitfit", "LlamaModel has none", "use `trainable: ia3`")


def test_a_model_section_is_checked_against_the_base_models_own_config_class(chat_recipes, llama, tmp_path, capsys):
    code, _ = run_stage("classify", chat_recipes, llama, tmp_path, "model.resid_pdrop=0.1")  # a GPT2Config key
    assert_refused(code, capsys.readouterr().err, "classify.yaml", "unknown key `model.resid_pdrop`")


@pytest.mark.slow
def test_sft_and_lora_on_a_llama_with_its_chat_template_reload_with_stock_loaders(chat_recipes, llama, tmp_path):
    for stage in ("sft", "lora"):
        code, metrics = run_stage(stage, chat_recipes, llama, tmp_path, "training.max_steps=2")
        assert code == 0, stage
    assert metrics["trainable_parameters"] < metrics["total_parameters"]
    generator = pipeline("text-generation", model=str(tmp_path / "sft"))
    im_end = generator.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generator.model.generation_config.eos_token_id == im_end  # generation stops at the chat EOS
    reply = generator([{"role": "user", "content": "Name a colour."}], max_new_tokens=4)
    assert reply[0]["generated_text"][-1]["role"] == "assistant"
    adapted = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "lora" / "adapter"))
    adapted_layers = {name.split(".")[-1] for name, module in adapted.named_modules() if hasattr(module, "lora_A")}
    assert adapted_layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # every linear layer
    merged = pipeline("text-generation", model=str(tmp_path / "lora" / "merged"))
    assert merged.model.generation_config.eos_token_id == im_end
    for folder in ("sft", "lora/adapter", "lora/merged"):  # the Hub cards say what architecture it is
        assert "llama" in ModelCard.load(tmp_path / folder / "README.md").data.tags, folder
