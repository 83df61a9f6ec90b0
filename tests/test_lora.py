import copy

import torch
from peft import PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from llmpipe import adapters


def test_merged_model_equals_base_plus_adapter(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(copy.deepcopy(tiny_model), adapters.lora_config({"r": 4}, TaskType.CAUSAL_LM, tiny_model))
    torch.manual_seed(0)
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the adapter an effect to check
            weight.data.normal_(0, 0.5)
    inputs = tokenizer(["I had always thought Jack"], return_tensors="pt")
    with torch.no_grad():
        expected = peft_model.eval()(**inputs).logits
        base_logits = tiny_model(**inputs).logits
    assert not torch.allclose(expected, base_logits, atol=1e-3)

    trainer = Trainer(peft_model, TrainingArguments(tmp_path / "checkpoints", report_to=[], use_cpu=True), processing_class=tokenizer)
    adapters.save_adapter_and_merged(
        trainer, tmp_path / "out" / "adapter", tmp_path / "out" / "merged", lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    )
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    for folder in ("adapter", "merged"):
        assert AutoTokenizer.from_pretrained(tmp_path / "out" / folder).get_vocab() == tokenizer.get_vocab()


def test_default_targets_every_linear_layer_of_gpt2(tiny_model):
    peft_model = get_peft_model(copy.deepcopy(tiny_model), adapters.lora_config({}, TaskType.CAUSAL_LM, tiny_model))
    adapted = {name.split(".")[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"c_attn", "c_proj", "c_fc"}
