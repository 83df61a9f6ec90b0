"""SFTTrainer as the sft stage sets it up: the prompt's tokens never count in the loss."""

import copy
import types

import pytest
from datasets import Dataset
from trl import SFTTrainer

from llmpipe.data import instructions
from llmpipe.stages.tuning import SftRecipe, sft_config

ENTRY = {"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."}


@pytest.mark.parametrize("prompt_format", ["alpaca", "chat"])
def test_prompt_tokens_are_masked_and_the_response_ends_with_eos(tiny_model, tokenizer, tmp_path, prompt_format):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = instructions.CHAT_TEMPLATE
    pair = instructions.prompt_completion(ENTRY, prompt_format)
    job = types.SimpleNamespace(recipe_path=tmp_path / "sft.yaml", tracker=types.SimpleNamespace(report_to=[]))
    recipe = SftRecipe(training={"bf16": False})
    trainer = SFTTrainer(
        model=copy.deepcopy(tiny_model),
        args=sft_config(recipe, str(tmp_path), job, context=256),  # as the stage builds it
        train_dataset=Dataset.from_list([pair]),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    prompt = instructions.prompt_text(ENTRY, prompt_format, tokenizer)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    learned = [token for token in labels if token != -100]
    assert tokenizer.decode(learned).startswith("Blue is a colour.")
    assert tokenizer.eos_token_id in learned  # the model learns to stop
    assert tokenizer.decode(ids[:n_prompt]) == prompt
