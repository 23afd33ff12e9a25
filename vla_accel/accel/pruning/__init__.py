"""Visual-token pruning methods: one file each, looked up by name.

``build_method(name, **params)`` makes one; a typo raises a ValueError with a did-you-mean and the list.
Adding a method = one new file with a ``PruningMethod`` subclass + one line here + ``conf/accel/<name>.yaml``.
"""

from __future__ import annotations

from vla_accel.registry import lookup
from vla_accel.accel.pruning.base import PruningMethod, SelectionContext
from vla_accel.accel.pruning.adaptive import AdaptiveBudget
from vla_accel.accel.pruning.divprune import DivPrune
from vla_accel.accel.pruning.efficientvla_tokens import EfficientVLATokens
from vla_accel.accel.pruning.fastervlm import FasterVLM
from vla_accel.accel.pruning.fastv import FastV
from vla_accel.accel.pruning.feather import Feather
from vla_accel.accel.pruning.hiprune import HiPrune
from vla_accel.accel.pruning.random_select import RandomSelect
from vla_accel.accel.pruning.text_guided import TextGuided
from vla_accel.accel.pruning.todre import ToDRE
from vla_accel.accel.pruning.transprune import TransPrune
from vla_accel.accel.pruning.uniform import UniformGrid
from vla_accel.accel.pruning.vla_pruner import VLAPruner
from vla_accel.accel.pruning.vtc_cls import VTCCLS

METHODS: dict[str, type[PruningMethod]] = {
    cls.name: cls for cls in (VLAPruner, FastV, TextGuided, DivPrune, EfficientVLATokens, RandomSelect, UniformGrid,
                              FasterVLM, VTCCLS, ToDRE, Feather, HiPrune, TransPrune, AdaptiveBudget)
}


def method_class(name: str) -> type[PruningMethod]:
    """The class registered under ``name``; unknown names raise ValueError (did-you-mean + valid list)."""
    return lookup(METHODS, name, "pruning method")


def build_method(name: str, **params) -> PruningMethod:
    return method_class(name)(**params)


__all__ = ["METHODS", "PruningMethod", "SelectionContext", "build_method", "method_class"]
