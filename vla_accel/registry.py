"""The one name lookup every registry of the package uses (subcommands, suites, policy types, pruning
methods, accel presets, sweep launchers): an unknown name is a ValueError with a did-you-mean and the
valid names. The lowest layer of the package: it imports nothing of it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

V = TypeVar("V")


def did_you_mean(name: object, valid: Iterable[str]) -> str:
    """" Did you mean 'x'?" for the closest valid name, or ""."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name(name: object, valid: Iterable[str], what: str, label: str = "Valid") -> ValueError:
    """The error for an unknown ``what`` (e.g. "pruning method"): did-you-mean, then the valid names."""
    valid = list(valid)
    return ValueError(f"unknown {what} {name!r}.{did_you_mean(name, valid)} {label}: {valid}")


def lookup(registry: Mapping[str, V], name: str, what: str, label: str = "Valid") -> V:
    """registry[name], or :func:`unknown_name`'s ValueError."""
    if name not in registry:
        raise unknown_name(name, sorted(registry), what, label)
    return registry[name]
