"""Pick the judge backend a recipe names; each backend imports only its own client library."""

from llmpipe.judge.base import Judge, JudgeSettings


def load(settings: JudgeSettings, device: str = "cpu") -> Judge:
    if settings.backend == "openai":
        from llmpipe.judge.openai import OpenAIJudge

        return OpenAIJudge(settings)
    from llmpipe.judge.hf import HfJudge

    return HfJudge(settings, device)
