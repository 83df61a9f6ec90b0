"""The package's shape: every module a stage runs is a DVC dep of that stage (else `dvc repro` reuses a
result of other code), stages stay independent of each other and of the commands, and no import cycle."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from llmpipe import cli
from tests.conftest import REPO

PACKAGE = REPO / "llmpipe"
DISPATCH = {"llmpipe.cli", "llmpipe.__main__"}  # a table of commands: it runs no stage's work
EVALUATE_MODULE = re.compile(r"""evaluate_modules\.load\(\s*["'](\w+)["']""")  # loaded by path, not imported


def module_path(name: str) -> Path | None:
    """The file of `llmpipe.a.b`, or None when the name is not a module of the package."""
    relative = Path(*name.split("."))
    for candidate in (REPO / relative.with_suffix(".py"), REPO / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The package's modules `path` imports anywhere in it (lazy imports inside functions too), and the
    folders of the evaluate modules it loads by name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("llmpipe")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmpipe"):
            for alias in node.names:  # `from llmpipe.x import y`: y is a submodule or a name in x
                found.add(f"{node.module}.{alias.name}" if module_path(f"{node.module}.{alias.name}") else node.module)
    for metric in EVALUATE_MODULE.findall(path.read_text(encoding="utf-8")):
        found.add(f"llmpipe.metrics.{metric}.{metric}")
    return {name for name in found if module_path(name)}


def closure(root: str) -> set[str]:
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports(module_path(name)))
    return seen


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    command = re.search(r"-m llmpipe (\S+)", stage["cmd"]).group(1)
    return cli.COMMANDS[command][0]


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("name", list(dvc_stages()))
def test_every_module_a_stage_runs_is_a_dvc_dep_of_that_stage(name):
    stage = dvc_stages()[name]
    stage = stage.get("do", stage)  # a foreach stage
    needed = {module_path(module) for module in closure(stage_module(stage)) - DISPATCH}
    needed = {path for path in needed if path.name != "__init__.py"}  # package markers: see the test below
    missing = sorted(str(path.relative_to(REPO)) for path in needed if not covered(path, stage["deps"]))
    assert not missing, f"dvc.yaml stage `{name}` does not depend on {missing}: add them to its deps"
    listed = [dep for dep in stage["deps"] if dep.startswith("llmpipe/")]
    unused = [dep for dep in listed if not any(covered(path, [dep]) for path in needed)]
    assert not unused, f"dvc.yaml stage `{name}` depends on {unused}, which it never runs: remove them"


def test_package_markers_hold_no_code():
    """`__init__.py` files are left out of the deps above, so they must not change what a stage does."""
    for path in PACKAGE.rglob("__init__.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        code = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        code = [node for node in code if not (isinstance(node, ast.Assign) and node.targets[0].id == "__version__")]
        assert not code, f"{path.relative_to(REPO)} holds code"


def all_modules() -> list[str]:
    return sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def test_no_import_cycle_lazy_imports_included():
    graph = {name: imports(module_path(name)) for name in all_modules()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in graph[name]:
            assert state.get(target) != "open", f"import cycle: {' -> '.join(trail[trail.index(target):] + [target])}"
            if target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_no_stage_imports_another_stage_or_a_command():
    stages = {module for module, _ in cli.COMMANDS.values() if module.startswith("llmpipe.stages.")}
    for stage in stages:
        reached = closure(stage) - {stage}
        assert not reached & stages, f"{stage} imports the stage(s) {sorted(reached & stages)}"
        commands = sorted(name for name in reached if name.startswith("llmpipe.commands"))
        assert not commands, f"{stage} imports the command module(s) {commands}"
