"""The one map from source name to Source class.

Modules register themselves with ``@register``; ``source_class`` raises
UnknownSourceError naming the known ones, as papermill does for its engines.
"""

from __future__ import annotations

from typing import TypeVar

from collector.errors import UnknownSourceError
from collector.sources.base import Source

_REGISTRY: dict[str, type[Source]] = {}
S = TypeVar("S", bound=type[Source])


def register(cls: S) -> S:
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"source {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def source_names() -> list[str]:
    return sorted(_REGISTRY)


def source_class(name: str) -> type[Source]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownSourceError(name, list(_REGISTRY)) from None


def default_sources() -> list[str]:
    return [n for n in source_names() if _REGISTRY[n].default_enabled]
