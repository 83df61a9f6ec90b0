"""requirements.lock (what `make install` installs, exactly) must agree with pyproject.toml's ranges (what a user
who installs llmpipe as a library gets): a range raised or a package added without `make lock` fails here."""

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO


def locked_versions(text: str) -> dict[str, str]:
    pins = [re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line) for line in text.splitlines()]
    return {canonicalize_name(pin[1]): pin[2] for pin in pins if pin}


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["dev"] + extras["app"]]


def disagreements(requirements: list[Requirement], locked: dict[str, str]) -> list[str]:
    found = []
    for requirement in requirements:
        version = locked.get(canonicalize_name(requirement.name))
        if version is None:
            found.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement.name}=={version} is outside pyproject.toml's {requirement.specifier}")
    return found


def test_every_declared_requirement_is_locked_inside_its_range():
    locked = locked_versions((REPO / "requirements.lock").read_text())
    assert disagreements(declared_requirements(), locked) == []


def test_the_makefiles_torch_is_the_locked_one():
    torch = re.search(r"^TORCH \?= (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)[1]
    assert torch == f"torch=={locked_versions((REPO / 'requirements.lock').read_text())['torch']}"


@pytest.mark.parametrize(
    "lock, expected",
    [
        ("trl==1.15.0\n", ["trl==1.15.0 is outside pyproject.toml's >=1.16.0"]),
        ("peft==9.0.0\n", ["trl is not in the lock"]),
    ],
)
def test_a_lock_that_disagrees_is_named(lock, expected):
    requirements = [Requirement("trl>=1.16.0")]
    assert disagreements(requirements, locked_versions(lock)) == expected
