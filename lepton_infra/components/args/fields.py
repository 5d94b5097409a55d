"""How a model field is declared: its description and config key (`described`), its bounds
(`whole`), its before-validators as reusable annotated types (`Flag`, `Tags`, `CidrList`, ...), and
the one place that turns pydantic's ValidationError into our ConfigError. Also the read side:
`config_key`, `description` and `default` answer for any field of any model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo

from lepton_infra.components.args.checks import (
    PRIVATE_EGRESS,
    USER_RE,
    check_cloud,
    check_int,
    check_mapping,
    check_name,
    check_public_key,
    check_tags,
)
from lepton_infra.errors import ConfigError

T = TypeVar("T")
MODEL_CONFIG = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
_PYDANTIC_ALLOWED = {
    "bool_type": "true or false",
    "string_type": "a string",
    "int_type": "a whole number",
    "dict_type": "a mapping (or leave it unset)",
    "list_type": "a list",
    "missing_argument": "it is required",
    "unexpected_keyword_argument": "the fields of the model",
}


def _config_error(cls: type, exc: ValidationError) -> ConfigError:
    """The first problem as a ConfigError: our own checks' messages as they are, pydantic's type
    errors as `<field> is <value>; allowed: <what>`."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    name = ".".join(str(p) for p in err["loc"]) or cls.__name__
    allowed = _PYDANTIC_ALLOWED.get(err["type"], err["msg"])
    if err["type"] == "unexpected_keyword_argument":
        allowed = ", ".join(f.name for f in fields(cls))
        return ConfigError(f"{cls.__name__}: unknown argument {name!r}; allowed: {allowed}")
    if err["type"] == "missing_argument":
        return ConfigError(f"{name} is not set; it is required ({cls.__name__})")
    return ConfigError(f"{name} is {err['input']!r}; allowed: {allowed}")


def raise_config_errors(model: type) -> None:
    """Make construction of the pydantic dataclass `model` raise ConfigError (exit 2) instead of
    pydantic's ValidationError, so every caller sees one error type naming the field."""
    init = vars(model)["__init__"]  # the one pydantic generated for this class

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise _config_error(model, exc) from None

    __init__.__doc__ = init.__doc__
    setattr(model, "__init__", __init__)  # noqa: B010  (mypy forbids assigning __init__)


def trusted_copy(cls: type[T], **values: Any) -> T:
    """An instance of `cls` from values taken from an already valid spec (a part of it, or a copy
    with the cluster's own name and key), built without validating a second time."""
    obj = cls.__new__(cls)
    obj.__dict__.update(values)
    return obj


def described(description: str, *, config: str | None = None, required_key: bool = False, **kw: Any) -> Any:
    """A model field: `description` is the one text every interface shows (config key, package
    input); `config` is its `lepton:` key name when the Pulumi program offers it."""
    extra: dict[str, Any] = {}
    if config is not None:
        extra = {"config_key": config, "config_required": required_key}
    return Field(description=description, json_schema_extra=extra or None, **kw)


def whole(low: int, high: int | None = None) -> Any:
    """A whole number in [low, high] (a bool is not one); the bounds are stated once, here."""

    def check(value: object, info: ValidationInfo) -> int:
        return check_int(value, str(info.field_name), low, high)

    return BeforeValidator(check)


def before(check: Any) -> Any:
    """A before-validator from a `check(value, field_name)` function."""
    return BeforeValidator(lambda value, info: check(value, str(info.field_name)))


def optional_whole(low: int, high: int) -> Any:
    def check(value: object, info: ValidationInfo) -> int | None:
        return None if value is None else check_int(value, str(info.field_name), low, high)

    return BeforeValidator(check)


def _strict_bool(value: object, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field_name} is {value!r}; allowed: true or false")
    return value


def _mapping(value: object, field_name: str) -> Any:
    check_mapping(value, field_name)
    return value


def _name(value: object, field_name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{field_name} is {value!r}; allowed: a string")
    check_name(value, field_name)
    return value


def _user(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not USER_RE.match(value):
        raise ConfigError(f"{field_name} is {value!r}; allowed: a Linux user name like 'lepton'")
    return value


def _egress(value: object, field_name: str) -> str:
    if value not in PRIVATE_EGRESS:
        raise ConfigError(
            f"{field_name} is {value!r}; allowed: {', '.join(PRIVATE_EGRESS)} "
            "(nat: internet through a NAT gateway; endpoints: only the cloud's own services)"
        )
    return str(value)


def _key(value: object, field_name: str) -> Any:
    """A literal key is checked; a pulumi Output (a key generated in the program) passes as is."""
    return check_public_key(value, field_name) if isinstance(value, str) else value


def _cidr_list(value: object, field_name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(
            f"{field_name} is {value!r}; allowed: a list of CIDR blocks like ['203.0.113.0/24']"
        )
    return list(value)


Cloud = Annotated[str, before(lambda v, n: check_cloud(v, n))]
Flag = Annotated[bool, before(_strict_bool)]
Tags = Annotated[dict[str, str], before(check_tags)]
Extra = Annotated[dict[str, Any], before(_mapping)]
Name = Annotated[str | None, before(_name)]

LinuxUser = Annotated[str, before(_user)]
Egress = Annotated[str, before(_egress)]
PublicKey = Annotated[Any, before(_key)]
CidrList = Annotated[list[str], before(_cidr_list)]
OptionalMapping = Annotated[dict[str, Any] | None, before(_mapping)]

# Fields every component spec has, described once.
UserTags = Annotated[
    Tags,
    described(
        "Extra tags/labels for every resource (the `lepton:cluster`/`lepton:env` tags are always added)."
    ),
]
ClusterName = Annotated[
    Name, described("Cluster name for the `lepton:cluster` tag (default: the resource name).")
]
EnvName = Annotated[Name, described("Environment for the `lepton:env` tag (default: the Pulumi stack name).")]


def config_key(cls: type, name: str) -> tuple[str, bool] | None:
    """`(lepton key, required)` when field `name` of `cls` is a stack config key, else None."""
    extra = cls.__pydantic_fields__[name].json_schema_extra  # type: ignore[attr-defined]
    if not isinstance(extra, dict) or "config_key" not in extra:
        return None
    return str(extra["config_key"]), bool(extra["config_required"])


def description(cls: type, name: str) -> str:
    """The one description of field `name` of `cls` (what every interface shows)."""
    return str(cls.__pydantic_fields__[name].description)  # type: ignore[attr-defined]


def default(cls: type, name: str) -> Any:
    """Field `name`'s default (`dataclasses.MISSING` when required; a factory's value otherwise)."""
    f = next(f for f in fields(cls) if f.name == name)
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default
