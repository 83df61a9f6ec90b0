
import torch
from peft import PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmpipe import adapters, cli
from llmpipe.artifacts import parameter_counts
from llmpipe.stages.classify import select_trainable
from tests.conftest import assert_refused, run_cli


def classifier(tiny_model, tokenizer, tmp_path):
    from llmpipe.stages.classify import load_classifier

    tiny_model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = load_classifier(str(tmp_path / "base"), {})
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def test_last_block_trains_the_head_last_block_and_final_norm_only(tiny_model, tokenizer, tmp_path):
    model = select_trainable(classifier(tiny_model, tokenizer, tmp_path), "last_block", {})
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters()
                         if name.startswith(("score.", "transformer.h.1.", "transformer.ln_f."))}
    counts = parameter_counts(model)
    assert 0 < counts["trainable_parameters"] < counts["total_parameters"]


def test_lora_trains_adapters_and_the_head(tiny_model, tokenizer, tmp_path):
    model = select_trainable(classifier(tiny_model, tokenizer, tmp_path), "lora", {"r": 2})
    assert isinstance(model, PeftModel)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in name for name in trainable) and any("score" in name for name in trainable)
    assert not any("wte" in name for name in trainable)


def test_classify_text_prints_label_and_probability_per_text(tiny_model, tokenizer, tmp_path):
    model = classifier(tiny_model, tokenizer, tmp_path)
    model.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    texts = ["WINNER!! Claim your free prize now", "See you at lunch?"]
    result = run_cli("classify-text", "--model", str(tmp_path / "clf"), *texts)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    # the saved folder's tokenizer, as the command reads it: padding the session's own would change it for later tests
    encoded = AutoTokenizer.from_pretrained(tmp_path / "clf")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = model.eval()(**encoded).logits.softmax(-1)
    for line, text, p in zip(lines, texts, probabilities):
        label, score, echoed = line.split("\t")
        assert echoed == text and label == ["ham", "spam"][int(p.argmax())]
        assert abs(float(score) - float(p.max())) < 1e-3


def test_a_text_generation_adapter_given_to_classify_text_is_named(tiny_model, tokenizer, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    get_peft_model(base, adapters.lora_config({"r": 2}, TaskType.CAUSAL_LM, base)).save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    assert_refused(cli.main(["classify-text", "--model", str(tmp_path / "adapter"), "Hi"]), capsys.readouterr().err,
                   f"{tmp_path / 'adapter'}: a PEFT adapter for CAUSAL_LM, not a classifier")
