"""The README is the user's manual: every command, make target and shipped accelerate config is in it (an edit
once dropped the sections on GPUs, MLflow and the Hub without any test noticing)."""

import re

from llmpipe import cli
from tests.conftest import REPO


def test_the_readme_names_every_command_make_target_and_accelerate_config():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1).split()
    missing = [f"make {target}" for target in targets if not re.search(rf"make {re.escape(target)}\b", readme)]
    missing += [f"llmpipe {name}" for name in cli.COMMANDS if f"llmpipe {name}" not in readme and f"`{name}`" not in readme]
    missing += [config.name for config in (REPO / "recipes/accelerate").glob("*.yaml") if f"`{config.name}`" not in readme]
    assert not missing, f"README.md does not mention: {', '.join(missing)}"
