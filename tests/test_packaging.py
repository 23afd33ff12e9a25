"""The install layout: every package folder is declared, the hydra configs ship as package data."""

import glob
import importlib.resources
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
SKIP_DIRS = {"__pycache__", ".pytest_cache"}


def _package_folders() -> dict[str, Path]:
    """{import name: folder} for every folder with an __init__.py under the mapped roots."""
    found = {}
    for top_name, folder in PACKAGE_DIR.items():
        root = ROOT / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if SKIP_DIRS & set(rel.parts):
                continue
            found[".".join([top_name, *rel.parts])] = init.parent
    return found


def test_the_top_level_folders_map_under_one_import_name():
    assert PACKAGE_DIR == {"vla_accel": "vla_accel", "vla_accel.envs": "envs",
                           "vla_accel.policies": "policies", "vla_accel.conf": "conf"}


def test_every_package_folder_is_listed_in_pyproject():
    declared = set(SETUPTOOLS["packages"])
    missing = {name: str(path.relative_to(ROOT)) for name, path in _package_folders().items()
               if name not in declared}
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_listed_package_exists():
    folders = _package_folders()
    ghosts = [p for p in SETUPTOOLS["packages"] if p not in folders]
    assert not ghosts, f"pyproject lists packages with no folder/__init__.py: {ghosts}"


def _conf_yaml_files() -> list[str]:
    conf = ROOT / PACKAGE_DIR["vla_accel.conf"]
    return sorted(str(p.relative_to(conf)) for p in conf.rglob("*.yaml"))


def test_conf_yaml_files_are_package_data():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["vla_accel.conf"]
    files = _conf_yaml_files()
    assert "eval.yaml" in files and "collect.yaml" in files and "env/spatial.yaml" in files
    # setuptools expands package-data patterns with glob(recursive=True) inside the package folder
    conf = ROOT / PACKAGE_DIR["vla_accel.conf"]
    covered = {str(Path(m)) for pat in patterns for m in glob.glob(pat, root_dir=conf, recursive=True)}
    uncovered = [f for f in files if f not in covered]
    assert not uncovered, f"conf files not covered by package-data {patterns}: {uncovered}"


@pytest.mark.parametrize("rel", ["eval.yaml", "collect.yaml", "env/spatial.yaml", "policy/expert.yaml",
                                 "eval/default.yaml", "collect/default.yaml"])
def test_configs_are_readable_through_the_installed_package(rel):
    assert importlib.resources.files("vla_accel.conf").joinpath(rel).is_file()


def test_console_script_points_at_the_cli():
    assert PYPROJECT["project"]["scripts"]["vla-accel"] == "vla_accel.cli:main"
    from vla_accel.cli import main

    assert callable(main)
