"""The book-scale recipe (recipes/gpt2-book): its models have the book's sizes. Built from config on the
meta device: no download, no memory."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llmpipe import config
from llmpipe.stages.pretrain import PretrainRecipe
from tests.conftest import REPO

BOOK = REPO / "recipes" / "gpt2-book"
# The Hub configs of the models the recipe starts from (what `from_pretrained` would read), written out
# because the tests cannot download them.
HUB_CONFIGS = {"gpt2": GPT2Config(), "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16)}
GPT2_VOCAB = 50257


def parameters(config_: GPT2Config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GPT2LMHeadModel(config_).parameters())


def test_pretrain_builds_gpt2_124m_from_config():
    recipe = config.load(PretrainRecipe, BOOK / "pretrain.yaml")
    assert recipe.init_from is None
    count = parameters(GPT2Config(vocab_size=GPT2_VOCAB, **recipe.model))
    assert count == 124_439_808  # the book's "124M" (output head tied to the token embedding)
    assert parameters(HUB_CONFIGS["gpt2"]) == count


@pytest.mark.parametrize("stage, hub_id, expected", [("classify", "gpt2", 124_439_808), ("sft", "gpt2-medium", 354_823_168), ("lora", "gpt2-medium", 354_823_168)])
def test_fine_tuning_starts_from_the_books_openai_models(stage, hub_id, expected):
    recipe = config.load_yaml(BOOK / f"{stage}.yaml")
    assert recipe["init_from"] == hub_id
    assert parameters(HUB_CONFIGS[hub_id]) == expected

