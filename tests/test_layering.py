"""The package's rooms import in one direction only (README, "Development").

Every `import` of a `vla_accel` module, at the top of a file or inside a function, must point to the
same room or a lower one. The robot-side client imports nothing of the package outside itself."""

from __future__ import annotations

import ast
from importlib.resources import files
from pathlib import Path

import pytest

# Lower number = lower layer; a room may import its own modules and any room below it.
LAYERS = {
    "registry": -1,  # the did-you-mean name lookup of every registry
    "measure": 0,   # timers, statistics, reports
    "envs": 0,      # simulated suites
    "policies": 1,  # the VLA policies (stamp their stages with measure's timers)
    "accel": 2,     # the accelerator core
    "runtime": 3,   # call styles, episodes, control loop, serving, client
    "harness": 4,   # rollouts, eval, results
    "data": 5,      # demo files and collection
    "tools": 6,     # bench, calibrate, sweep, plots
    "cli": 7,       # the `vla-accel` command
}
CLIENT = "runtime.client"
PACKAGE_ROOT = Path(str(files("vla_accel")))


def _room_path(room: str) -> Path:
    """envs and policies live at the repository's top and install under vla_accel (pyproject.toml)."""
    from importlib.util import find_spec

    spec = find_spec(f"vla_accel.{room}")
    return Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin).with_suffix("")


def _module_files():
    for room in LAYERS:
        path = _room_path(room)
        if path.is_dir():
            yield from ((room, f) for f in sorted(path.rglob("*.py")))
        elif path.with_suffix(".py").is_file():
            yield room, path.with_suffix(".py")


def _imported(tree: ast.AST) -> list[tuple[str, int]]:
    """Dotted names (below vla_accel) of every vla_accel module or name a file imports, with line numbers."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vla_accel":  # `from vla_accel import envs` imports the module vla_accel.envs
                found += [(f"vla_accel.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
    return [(name[len("vla_accel."):], line) for name, line in found if name.startswith("vla_accel.")]


def _room_of(dotted: str) -> str | None:
    head = dotted.split(".")[0]
    return head if head in LAYERS else None


def _violations():
    for room, path in _module_files():
        rel = Path(room, *path.relative_to(_room_path(room)).parts) if path.parent != PACKAGE_ROOT else Path(path.name)
        in_client = rel.parts[:2] == ("runtime", "client")
        for target, line in _imported(ast.parse(path.read_text(), str(path))):
            target_room = _room_of(target)
            if target_room is None:  # vla_accel.__version__ and friends
                continue
            if in_client and not target.startswith(CLIENT):
                yield f"{rel}:{line} imports vla_accel.{target} (the client imports nothing of the package)"
            elif target_room != room and LAYERS[target_room] >= LAYERS[room]:
                yield f"{rel}:{line} ({room}) imports vla_accel.{target} ({target_room}): upward"


def test_every_room_exists():
    from importlib.util import find_spec

    assert [r for r in LAYERS if find_spec(f"vla_accel.{r}") is None] == []


def test_imports_point_down_only():
    assert list(_violations()) == []


def test_the_checker_sees_upward_and_lazy_imports(tmp_path):
    tree = ast.parse("def f():\n    from vla_accel.tools import bench\nfrom vla_accel import envs\n")
    assert sorted(_imported(tree)) == [("envs", 3), ("tools", 2)]


@pytest.mark.parametrize("name", ["accelerate", "AccelConfig"])
def test_public_entry_point(name):
    import vla_accel

    assert callable(getattr(vla_accel, name))


MAX_FUNCTION_LINES = 60


def test_every_function_is_short():
    """Long functions hide their steps: each one of the package fits in MAX_FUNCTION_LINES lines."""
    long = []
    for room, path in _module_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert long == []
