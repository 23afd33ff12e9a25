import pytest

from vla_accel.accel.pruning import METHODS, build_method


def test_registry_lists_every_method():
    expected = {"vla_pruner", "fastv", "text_guided", "divprune", "efficientvla_tokens", "random", "uniform",
                "fastervlm", "vtc_cls", "todre", "feather", "hiprune", "transprune", "adaptive"}
    assert set(METHODS) == expected


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(ValueError, match=r"Did you mean 'fastv'\?.*Valid: \["):
        build_method("fastvv")
