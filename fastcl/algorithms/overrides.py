"""String overrides of a learner's hyperparameter dataclass (``fastcl run --set KEY=VALUE``).

:func:`parse_overrides` turns ``["lam=0.3", "first_order=true"]`` into typed keyword arguments of
any config dataclass (``ERConfig``, ``EMCLConfig``, ``MAMLConfig`` ...), so a script can take the
same strings as the command line::

    cfg = HALConfig(**parse_overrides(["lam=0.3"], HALConfig))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Sequence

__all__ = ["parse_overrides"]


def parse_overrides(items: Sequence[str], config_cls: type) -> dict[str, Any]:
    """``["lam=0.3", "first_order=true"]`` -> typed config overrides (names checked).

    Args:
        items: ``KEY=VALUE`` strings (``--set``); the type of each value is the field's default's,
            or, for a field whose default is ``None`` (``Optional[int]`` ...), its annotation's;
            ``none`` gives ``None`` for a field that may be ``None``.
        config_cls: the config dataclass whose fields the keys name.

    Raises ValueError naming the key and the expected type, or the valid keys for an unknown one.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        hints = {}
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise ValueError(f"--set {item!r}: {config_cls.__name__} has no setting {key!r}; "
                             f"settings: {', '.join(sorted(fields))}")
        default = fields[key].default
        optional, annotated = _optional_type(hints.get(key))
        if optional and value.strip().lower() == "none":
            out[key] = None
            continue
        like = f"like its default {default!r}"
        if default is None and annotated is not None:
            default = annotated()  # the annotation's type stands in for the missing default
            like = f"its type is Optional[{annotated.__name__}]; none for None"
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {key}: expects true or false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
            continue
        kinds = {int: "an int", float: "a number", tuple: "comma-separated numbers"}
        kind = next((k for k in kinds if isinstance(default, k)), None)
        try:
            if kind is tuple:
                out[key] = tuple(float(v) for v in value.split(","))
            else:
                out[key] = value if kind is None else kind(value)
        except ValueError:
            raise ValueError(f"--set {key}: expects {kinds[kind]} ({like}), got {value!r}") from None
    return out


def _optional_type(hint: Any) -> tuple[bool, Any]:
    """(whether ``hint`` admits None, its one scalar type among bool / int / float / str or None)."""
    if hint is None:
        return False, None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in args
    scalars = [a for a in args if a in (bool, int, float, str)]
    return optional, scalars[0] if len(scalars) == 1 else None
