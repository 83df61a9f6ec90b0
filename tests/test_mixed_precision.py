import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from llmpipe.data.packing import causal_lm_batch
from llmpipe.runtime import mixed_precision

BLOCKS = [{"input_ids": [(7 * i + j) % 64 for j in range(16)]} for i in range(16)]


def bf16_trainer(tmp_path, callbacks) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, bf16=True, use_cpu=True, logging_steps=1,
        report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
    )
    return Trainer(model=model, args=arguments, train_dataset=BLOCKS, data_collator=causal_lm_batch, callbacks=callbacks)


def test_training_under_bf16_keeps_autocast_but_returns_the_logits_unconverted(tmp_path):
    converting = bf16_trainer(tmp_path / "a", [])
    converting.train()
    dropped = bf16_trainer(tmp_path / "b", [mixed_precision.HalfPrecisionOutputs()])
    dropped.train()
    batch = causal_lm_batch(BLOCKS[:4])
    assert converting.model(**batch).logits.dtype == torch.float32  # accelerate's copy: what the callback removes
    outputs = dropped.model(**batch)
    assert outputs.logits.dtype == torch.bfloat16  # still under autocast, not converted
    assert outputs.loss.dtype == torch.float32
    losses = [[entry["loss"] for entry in trainer.state.log_history if "loss" in entry] for trainer in (converting, dropped)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]  # the training itself is unchanged


def test_nothing_to_drop_without_mixed_precision():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    assert not mixed_precision.drop_fp32_outputs(model)
    assert "forward" not in model.__dict__
