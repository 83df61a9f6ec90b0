"""Recipes and params: load YAML, apply `--set` overrides, check every key and type against its schema.

A schema is a dataclass. A field marked with `library_section(cls)` holds the keyword arguments of a
library class (`GPT2Config`, `TrainingArguments`, `BpeTrainer`, ...): its keys are checked against that
class's own arguments, so a recipe uses the library's names and nothing is translated.
"""

import argparse
import dataclasses
import difflib
import enum
import inspect
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from llmpipe import inputs
from llmpipe.errors import UserError

T = TypeVar("T")


def library_section(cls: type, help: str = "") -> Any:
    """A recipe section whose keys are `cls`'s own constructor arguments."""
    return dataclasses.field(default_factory=dict, metadata={"library": cls, "help": help})


def checked(default: Any, accept: Callable[[Any], bool], rule: str) -> Any:
    """A field whose values `accept` refuses are refused when the recipe loads (not after training);
    `rule` completes "must be ..." in the error. None (unset) is always accepted."""
    return dataclasses.field(default=default, metadata={"accept": accept, "rule": rule})


def at_least(minimum: int, default: Any) -> Any:
    return checked(default, lambda value: value >= minimum, f"at least {minimum}")


SEEDS = range(2**32)  # what numpy and torch take
SEED_RULE = "between 0 and 4294967295 (numpy and torch take 32-bit seeds)"


def seed(default: int) -> Any:
    """A seed numpy or torch takes: a negative one fails only where it is first used, perhaps hours in."""
    return checked(default, lambda value: value in SEEDS, SEED_RULE)


def broken_rule(field: dataclasses.Field, value: Any) -> str | None:
    """What a `checked` field's rule says of a value it refuses ("must be ... (got ...)"); None if it passes."""
    accept = field.metadata.get("accept")
    if accept is None or value is None or accept(value):
        return None
    return f"must be {field.metadata['rule']} (got {value})"


def option_type(schema: type, name: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse's `type` for a command-line option that sets `schema`'s field `name`: the text converted, then
    held to the field's `checked` rule, so that argparse names the option in the error."""
    field = next(field for field in dataclasses.fields(schema) if field.name == name)

    def parse(text: str) -> Any:
        value = convert(text)
        if broken := broken_rule(field, value):
            raise argparse.ArgumentTypeError(broken)
        return value

    parse.__name__ = convert.__name__  # argparse's "invalid int value: 'x'"
    return parse


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    text = inputs.read_text(path, "a recipe or params file: check the path, or the `recipe:` name in params.yaml")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides in place (values parsed as YAML). They win over the file."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, for example training.learning_rate=3e-4")
        *parents, leaf = key.split(".")
        node = data
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {'.'.join(parents[: depth + 1])} is a value, not a section")
        try:
            node[leaf] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({getattr(err, 'problem', err)}); "
                            f"to pass it as text, quote it: --set '{key}=\"...\"'") from None
    return data


def named_changes(reference: str) -> dict:
    """The mapping at the dotted NAME in the YAML file of a `FILE:NAME` reference (`--set-from`)."""
    file, sep, name = reference.rpartition(":")
    if not sep or not file or not name:
        raise UserError(f"--set-from {reference!r}: expected FILE:NAME, for example recipes/tiny/adaptation.yaml:methods.probe")
    node: Any = load_yaml(file)
    for depth, part in enumerate(parts := name.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            found = ", ".join(map(str, node)) if isinstance(node, dict) else "no entries"
            raise UserError(f"{file}: no `{'.'.join(parts[: depth + 1])}` (--set-from {reference}); {where} has {found or 'no entries'}")
        node = node[part]
    if not isinstance(node, dict):
        raise UserError(f"{file}: `{name}` must be a mapping of recipe values, got {type(node).__name__}")
    return node


def merge(data: dict, changes: dict) -> dict:
    """`changes` over `data`, section by section (a section in both keeps the keys `changes` leaves alone)."""
    merged = dict(data)
    for key, value in changes.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if both_sections else value
    return merged


def load(schema: type[T], path: str | Path, overrides: list[str] = (), changes_from: str | None = None,
         sections: tuple[str, ...] | None = None) -> T:
    """Read `path` (only its top-level `sections`, when given: a stage that shares part of another's recipe),
    apply the changes of a `--set-from` FILE:NAME reference and then the overrides, and build `schema` from
    it; any mistake names the file(s) and key."""
    data = load_yaml(path)
    if sections is not None:
        data = {key: value for key, value in data.items() if key in sections}
    if changes_from:
        data = merge(data, named_changes(changes_from))
    data = apply_overrides(data, list(overrides))
    return build(schema, data, source=f"{path} with {changes_from}" if changes_from else str(path))


def build(schema: type[T], data: dict, source: str, prefix: str = "") -> T:
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    hints = typing.get_type_hints(schema)
    for name, fix in getattr(schema, "RETIRED_KEYS", {}).items():  # keys of older recipes (`section.key` too), with what replaced them
        section, _, key = name.rpartition(".")
        holder = data.get(section) if section else data
        if isinstance(holder, dict) and key in holder:
            raise UserError(f"{source}: `{prefix}{name}` {fix}")
    reject_unknown(data, fields, source, prefix)
    values = {}
    for name, field in fields.items():
        key = prefix + name
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise UserError(f"{source}: missing key `{key}`")
            continue
        library = field.metadata.get("library")
        if library is not None:
            values[name] = _check_library_kwargs(library, data[name], source, key + ".")
        else:
            values[name] = _conform(data[name], hints[name], source, key)
        if broken := broken_rule(field, values[name]):
            raise UserError(f"{source}: `{key}` {broken}")
    return schema(**values)


def reject_unknown(data: dict, valid: typing.Iterable[str], source: str, prefix: str) -> None:
    valid = list(valid)
    for name in data:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f"; did you mean `{prefix}{close[0]}`?" if close else f"; valid keys: {', '.join(sorted(valid))}"
            raise UserError(f"{source}: unknown key `{prefix}{name}`{hint}")


def check_library_section(cls: type, data: Any, source: str, key: str) -> dict:
    """A section whose class is known only once a model is at hand (e.g. the base model's config class)."""
    return _check_library_kwargs(cls, data, source, key + ".")


def _check_library_kwargs(cls: type, data: Any, source: str, prefix: str) -> dict:
    if not isinstance(data, dict):
        raise UserError(f"{source}: `{prefix[:-1]}` must be a mapping of {cls.__name__} arguments")
    arguments = library_arguments(cls)
    reject_unknown(data, arguments, source, prefix)
    values = {name: _conform(value, arguments[name], source, prefix + name) for name, value in data.items()}
    for name, value in values.items():
        _check_library_number(name, value, source, prefix + name)
    return values


def _fraction(value: Any) -> bool:
    return 0 <= value <= 1


# Numbers that the libraries take as given and fail on later (the optimizer at its first step, a dropout layer
# at the first forward, the DPO loss) or that silently train nothing: checked where the recipe enters, by the
# library's own argument name, whichever section holds them (TrainingArguments, SFT/DPOConfig, GPT2Config,
# PEFT configs, which are also built whole at entry). Names ending in `dropout` or `_pdrop` are probabilities.
LIBRARY_NUMBER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (lambda v: v > 0, "above 0"),
    "weight_decay": (lambda v: v >= 0, "at least 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "adam_beta2": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "adam_epsilon": (lambda v: v >= 0, "at least 0"),
    "max_grad_norm": (lambda v: v >= 0, "at least 0 (0: no clipping)"),
    "warmup_steps": (lambda v: v >= 0, "at least 0 (below 1: a fraction of all steps)"),
    "per_device_train_batch_size": (lambda v: v > 0, "above 0"),
    "per_device_eval_batch_size": (lambda v: v > 0, "above 0"),
    "gradient_accumulation_steps": (lambda v: v > 0, "above 0"),
    "label_smoothing_factor": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "layer_norm_epsilon": (lambda v: v > 0, "above 0"),
    "initializer_range": (lambda v: v >= 0, "at least 0"),
    "beta": (lambda v: v > 0, "above 0 (DPO's loss scales the log-ratios by it: 0 learns nothing)"),
}


def library_number_rule(name: str) -> tuple[Callable[[Any], bool], str] | None:
    if name.endswith(("dropout", "_pdrop")):
        return _fraction, "between 0 and 1 (a probability)"
    return LIBRARY_NUMBER_RULES.get(name)


def _check_library_number(name: str, value: Any, source: str, key: str) -> None:
    rule = library_number_rule(name)
    if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and not rule[0](value):
        raise UserError(f"{source}: `{key}` must be {rule[1]} (got {value})")


def library_arguments(cls: type) -> dict[str, Any]:
    """Argument name -> type annotation (or `Any`) of a library class's constructor."""
    if dataclasses.is_dataclass(cls):
        return {f.name: _resolve(cls, f) for f in dataclasses.fields(cls) if f.init}
    parameters = inspect.signature(cls).parameters.values()
    return {
        p.name: Any if p.default in (None, inspect.Parameter.empty) else type(p.default)
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    }


def _resolve(cls: type, field: dataclasses.Field) -> Any:
    """A field's annotation as a type; one naming what its module never imported (e.g. GPT2Config's
    'torch.dtype') is not checked rather than failing the whole class."""
    if not isinstance(field.type, str):
        return field.type
    namespace = vars(sys.modules[cls.__module__])
    try:
        return eval(field.type, dict(namespace))  # noqa: S307 - a library's own annotation string
    except Exception:
        return Any


class _Mismatch(Exception):
    pass


def _conform(value: Any, annotation: Any, source: str, key: str) -> Any:
    try:
        conformed = _match(value, annotation, source, key)
    except _Mismatch:
        raise UserError(
            f"{source}: `{key}` must be {_describe(annotation)}, got {type(value).__name__} {value!r}"
        ) from None
    if isinstance(conformed, float) and not math.isfinite(conformed):  # .nan, .inf: no library trains on them
        raise UserError(f"{source}: `{key}` must be a finite number (got {conformed})")
    return conformed


def _match(value: Any, annotation: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _match(value, arm, source, key)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is typing.Literal:
        value = _unbool(value, args)
        if value in args:
            return value
        raise _Mismatch
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        # YAML 1.1 (PyYAML) reads `3e-4` as a string: accept what Python reads as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _Mismatch
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = args[0] if args else Any
        return [_conform(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        if not args:
            return value
        return {k: _conform(v, args[1], source, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, dict):
            return build(annotation, value, source, key + ".")
        raise _Mismatch
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = {member.value for member in annotation}
        value = _unbool(value, allowed)
        if value in allowed:
            return value
        raise _Mismatch
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise _Mismatch
    return value


YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _unbool(value: Any, allowed) -> Any:
    """YAML 1.1 reads an unquoted `no` as False, and `dvc exp run -S` writes recipes back unquoted: where
    the word is one of the allowed values (e.g. eval_strategy: no), take the word."""
    if isinstance(value, bool):
        return next((word for word in YAML_BOOL_WORDS[value] if word in allowed), value)
    return value


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(annotation, "__name__", str(annotation))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the resolved config as MLflow params."""
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    flat = {}
    for name, value in data.items():
        flat.update(flatten(value, f"{prefix}{name}."))
    return flat
