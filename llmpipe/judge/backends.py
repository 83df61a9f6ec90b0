"""Pick the judge backend a recipe names; each backend imports only its own client library."""

from pathlib import Path

from llmpipe.errors import UserError
from llmpipe.judge.base import Judge, JudgeSettings


def load(settings: JudgeSettings, device: str = "cpu") -> Judge:
    if settings.backend == "openai":
        from llmpipe.judge.openai import OpenAIJudge

        return OpenAIJudge(settings)
    from llmpipe.judge.hf import HfJudge

    return HfJudge(settings, device)


def load_or_explain(settings: JudgeSettings, device: str, recipe_path: Path) -> Judge:
    """The judge, loaded before any other work; a judge that cannot be had names the setting."""
    try:
        return load(settings, device)
    except UserError as err:
        raise UserError(f"{recipe_path}: `judge.model`: {err}") from None


def describe(judge: Judge) -> str:
    """The judge as metrics and cards name it: what its folder's card says it is, else its identity."""
    return getattr(judge, "description", judge.identity)
