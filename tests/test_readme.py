"""The README and docs/ are the user's manual: every command, make target and shipped accelerate config is in
them (an edit once dropped the sections on GPUs, MLflow and the Hub without any test noticing), and the README
stays a short entry to them (it once grew to 931 lines, the quick start buried in measurements)."""

import re

from llmpipe import cli
from tests.conftest import REPO

README_MAX_LINES = 250


def manual() -> str:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def test_the_manual_names_every_command_make_target_and_accelerate_config():
    text = manual()
    targets = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1).split()
    missing = [f"make {target}" for target in targets if not re.search(rf"make {re.escape(target)}\b", text)]
    missing += [f"llmpipe {name}" for name in cli.COMMANDS if f"llmpipe {name}" not in text and f"`{name}`" not in text]
    missing += [config.name for config in (REPO / "recipes/accelerate").glob("*.yaml") if f"`{config.name}`" not in text]
    assert not missing, f"neither README.md nor docs/ mentions: {', '.join(missing)}"


def test_the_readme_names_every_stage_and_command_itself():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [name for name in cli.COMMANDS if f"`{name}`" not in readme and f"llmpipe {name}" not in readme]
    assert not missing, f"README.md's stage table and commands leave out: {', '.join(missing)}"


def test_the_readme_stays_an_entry_point():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to a page under docs/ and link it"
