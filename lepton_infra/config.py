"""Stack configuration (`lepton:*` keys in `stacks/Pulumi.<env>.yaml`) parsed and validated in plain
Python, before the program creates any resource. Every error names the config key as the user
wrote it (`lepton:gpusPerNode`), the value, and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lepton_infra.errors import ConfigError

NAMESPACE = "lepton"


@dataclass(frozen=True)
class Key:
    """One `lepton:` config key: its TrainingClusterArgs field, parser, whether required, and a
    description. Derived from the model's fields (`keys()`), never written by hand."""

    name: str
    field: str
    kind: str  # "string" | "integer" | "boolean" | "array" | "json" (an object, given as JSON text)
    description: str
    required: bool = False
    default: Any = None  # None: no default shown (unset, or required)


def _kind(annotation: Any) -> str:
    """The config kind of a model field's type (`int | None` -> integer, `dict` -> json, ...)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    base = typing.get_origin(annotation) or annotation
    return {bool: "boolean", int: "integer", list: "array", dict: "json"}.get(base, "string")


def keys() -> tuple[Key, ...]:
    """The stack's keys, from `TrainingClusterArgs`' fields that name a config key: one source for
    the key names, kinds, descriptions, defaults and which are required."""
    from lepton_infra.components import args as model

    out = []
    for f in dataclasses.fields(model.TrainingClusterArgs):
        named = model.config_key(model.TrainingClusterArgs, f.name)
        if named is None:
            continue
        name, required = named
        annotation = model.TrainingClusterArgs.__pydantic_fields__[f.name].annotation  # type: ignore[attr-defined]
        value = model.default(model.TrainingClusterArgs, f.name)
        shown = None if required or value in (None, dataclasses.MISSING) else value
        out.append(
            Key(
                name,
                f.name,
                _kind(annotation),
                model.description(model.TrainingClusterArgs, f.name),
                required,
                shown,
            )
        )
    return tuple(out)


KEYS: tuple[Key, ...] = keys()
_BY_NAME = {k.name: k for k in KEYS}
_BY_FIELD = {k.field: k for k in KEYS}
# Catalog errors name what was looked up, not a field: map them to the keys the user set.
_CATALOG_HINTS = (
    ("unknown cloud", "cloud"),
    ("unknown accelerator", "accelerator"),
    ("per node is not offered", "gpusPerNode"),
    ("region ", "region"),
)


def _bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ConfigError(f"lepton:{key} is {raw!r}; allowed: true or false")


def _int(key: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"lepton:{key} is {raw!r}; allowed: a whole number")
    try:
        return int(str(raw).strip())
    except ValueError as exc:
        raise ConfigError(f"lepton:{key} is {raw!r}; allowed: a whole number") from exc


def _array(key: str, raw: Any) -> list[str]:
    value = raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value = (
                json.loads(text)
                if text.startswith("[")
                else [p.strip() for p in text.split(",") if p.strip()]
            )
        except json.JSONDecodeError as exc:
            raise ConfigError(f'lepton:{key} is {raw!r}; allowed: a list like ["203.0.113.0/24"]') from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'lepton:{key} is {raw!r}; allowed: a list of strings like ["203.0.113.0/24"]')
    return value


def _json(key: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw  # structured config arrives already parsed
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"lepton:{key} is {raw!r}; allowed: a JSON object ({exc.msg})") from exc


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "json": _json,
    "boolean": _bool,
    "integer": _int,
    "array": _array,
    "string": lambda key, raw: str(raw),
}


@dataclass(frozen=True)
class StackConfig:
    """Validated stack configuration: `args` are ready for TrainingCluster; `hourly_cost_usd` is
    the catalog price of the whole pool (None when the catalog has no price)."""

    args: Any  # TrainingClusterArgs (typed loosely: importing components pulls in pulumi)
    hourly_cost_usd: float | None


def parse(raw: Mapping[str, Any], *, cluster: str, env: str) -> StackConfig:
    """Parse and validate `lepton:` config values (keys without the namespace). Raises ConfigError
    for the first problem; unknown keys are rejected with a did-you-mean."""
    from lepton_infra.components.args import TrainingClusterArgs

    for key in raw:
        if key not in _BY_NAME:
            guess = difflib.get_close_matches(key, list(_BY_NAME), n=1)
            hint = f" (did you mean lepton:{guess[0]}?)" if guess else ""
            raise ConfigError(f"unknown config key lepton:{key}{hint}; allowed keys: {', '.join(_BY_NAME)}")
    for spec in KEYS:
        if spec.required and raw.get(spec.name) in (None, ""):
            raise ConfigError(
                f"lepton:{spec.name} is not set; it is required ({spec.description}): "
                f"`pulumi config set lepton:{spec.name} ...`"
            )
    values = {_BY_NAME[k].field: _PARSERS[_BY_NAME[k].kind](k, v) for k, v in raw.items() if v is not None}
    try:
        args = TrainingClusterArgs(cluster=cluster, env=env, **values)  # validated here, once
        entry = args.validate()  # the catalog row
        _check_cloud_specifics(args)
    except ConfigError as exc:
        raise _named(exc) from exc
    price = entry.hourly_usd(args.spot)
    return StackConfig(args=args, hourly_cost_usd=None if price is None else round(price * args.nodes, 4))


def _check_cloud_specifics(args: Any) -> None:
    """The cloud module's own checks (zone, image, ...): they need its SDK, not any resource."""
    from lepton_infra.components.neutral import check_pool_args

    check_pool_args(args.pool_args())


def _named(exc: ConfigError) -> ConfigError:
    """Rewrite an args/catalog error so it names the config key instead of the Python field."""
    message = str(exc)
    for field_name, spec in sorted(_BY_FIELD.items(), key=lambda kv: -len(kv[0])):
        for prefix in (f"{field_name} ", f"{field_name}["):
            if message.startswith(prefix):
                return ConfigError(f"lepton:{spec.name}{message[len(field_name) :]}")
    for needle, key in _CATALOG_HINTS:
        if needle in message:
            return ConfigError(f"lepton:{key}: {message}")
    return ConfigError(f"lepton config: {message}")


def schema() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's `config:` block for these keys (`python -m lepton_infra.config` prints it;
    tests check the file matches)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in KEYS:
        # Pulumi.yaml's config types are string/integer/boolean/array: an object travels as JSON text.
        kind = "string" if spec.kind == "json" else spec.kind
        entry: dict[str, Any] = {"type": kind, "description": spec.description}
        if spec.default is not None:
            entry["default"] = spec.default
        if spec.kind == "array":
            entry["items"] = {"type": "string"}
        out[f"{NAMESPACE}:{spec.name}"] = entry
    return out


def render_pulumi_yaml(current: str) -> str:
    """Pulumi.yaml with its `config:` block regenerated from the model (the rest kept as is)."""
    import yaml

    head = current[: current.index("\nconfig:")]
    block = {name.split(":", 1)[1]: entry for name, entry in schema().items()}
    body = yaml.safe_dump({"config": block}, sort_keys=False, width=200, allow_unicode=True)
    return head + "\n" + body


if __name__ == "__main__":  # regenerate: python -m lepton_infra.config > Pulumi.yaml.new
    import pathlib
    import sys

    sys.stdout.write(render_pulumi_yaml(pathlib.Path("Pulumi.yaml").read_text()))
