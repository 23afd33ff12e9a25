"""What a budget sweep runs: accel presets x keep ratios x layer-skip settings, plus the baseline.

A :class:`SweepSpec` comes from the `sweep` config (conf/sweep.yaml + a preset in conf/sweep/), whose
types Hydra checks at compose (sweep_config.SweepSchema); ``__post_init__`` checks the rest, before
anything runs. :meth:`SweepSpec.points` lists every
configuration once; :meth:`SweepSpec.multirun_parts` turns them into the Cartesian blocks a Hydra
multirun can express (Hydra's basic sweeper only takes products, and a keep ratio means nothing for
presets that do not prune, such as `none` and `vla_cache`, so those run once per skip setting).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from vla_accel.accel.preset_config import load_preset, preset_names
from vla_accel.registry import did_you_mean
from vla_accel.tools.sweep.sweep_config import typed

BASELINE = "none"  # the accel preset that runs the policy unaccelerated
LAUNCHERS = ("basic", "joblib", "ray")  # Hydra's basic / joblib launchers, or Ray tasks (harness.dispatch)


def accel_presets() -> dict[str, dict]:
    """{preset name: its flat config, as the `accel` group composes it} for every conf/accel/*.yaml."""
    return {name: load_preset(name) for name in preset_names()}


def prunes(preset: Mapping[str, Any]) -> bool:
    """True if the preset prunes visual tokens, i.e. takes a keep ratio (`method` set)."""
    return bool(preset.get("method"))


@dataclass(frozen=True, order=True)
class SweepPoint:
    """One configuration of the sweep = one eval job (and one bench entry).

    keep_ratio is None for presets that do not prune; skip_layers are the LLM layers never entered.
    """

    accel: str
    keep_ratio: float | None
    skip_layers: tuple[int, ...] = ()

    @property
    def is_baseline(self) -> bool:
        return self.accel == BASELINE and not self.skip_layers

    @property
    def label(self) -> str:
        """'vla_pruner@0.25', 'none', 'fastv@0.5 skip[3,5]'."""
        text = self.accel if self.keep_ratio is None else f"{self.accel}@{self.keep_ratio:g}"
        if self.skip_layers:
            text += f" skip[{','.join(map(str, self.skip_layers))}]"
        return text

    def overrides(self) -> list[str]:
        """The eval overrides that select this point (keep_ratio only for pruning presets)."""
        out = [f"accel={self.accel}"]
        if self.keep_ratio is not None:
            out.append(f"accel.keep_ratio={self.keep_ratio!r}")
        out.append(f"accel.skip_layers=[{','.join(map(str, self.skip_layers))}]")
        return out


@dataclass(frozen=True)
class MultirunPart:
    """One Cartesian block of the sweep, run as one `vla-accel eval -m ...` (Hydra multirun).

    name: the block's folder under the sweep directory; sweep_overrides: Hydra sweep syntax
    (`accel=a,b accel.keep_ratio=0.5,0.25 accel.skip_layers=[],[3]`); points: what it expands to.
    """

    name: str
    sweep_overrides: tuple[str, ...]
    points: tuple[SweepPoint, ...]
    subdir: str  # hydra.sweep.subdir: readable job folders, unique within the block


def _duplicates(items: Sequence) -> list:
    seen, dup = set(), []
    for x in items:
        if x in seen and x not in dup:
            dup.append(x)
        seen.add(x)
    return dup


@dataclass(frozen=True)
class SweepSpec:
    """methods: accel preset names (conf/accel/); the baseline `none` is always added.
    keep_ratios: the budgets for the pruning presets, each in (0, 1].
    skip_layers: layer-skip settings, each a list of LLM layer indices ([] = no skipping).
    launcher: the Hydra launcher plugin for the eval jobs (basic = one after another in one process,
      joblib = parallel processes on this machine, ray = Ray tasks through Ray's own API, a local instance
      or an existing cluster: vla_accel.harness.dispatch).
    n_jobs: joblib's parallel processes (null = its default, every core).
    ray_address: the Ray cluster to join (null = start a local Ray instance); the same as ray["address"].
    ray: the RaySchema keys (vla_accel.harness.cluster_config): address, auth_token_path, num_cpus and
      num_gpus per job, env_vars, ship_code, max_ship_mb, local_num_cpus.
    bench: run `vla-accel bench` over the same points in one process after the evals (interleaved
      timing; the sweep's speedups come from it).
    eval_overrides: overrides for every eval job (env=..., policy=..., eval.n_episodes=...); the bench
      gets them too, less eval.* and hydra ones.
    bench_overrides: bench.* overrides for the bench pass only (bench.rounds=20, bench.threads=1).
    prune_layer: K for every pruning preset, evals and bench alike (null = each preset's own: see
      TokenPruningConfig; a 2-layer model takes 1).
    """

    methods: tuple[str, ...]
    keep_ratios: tuple[float, ...]
    skip_layers: tuple[tuple[int, ...], ...] = ((),)
    launcher: str = "basic"
    n_jobs: int | None = None
    ray_address: str | None = None
    bench: bool = True
    eval_overrides: tuple[str, ...] = ()
    bench_overrides: tuple[str, ...] = ()
    prune_layer: int | None = None
    ray: Mapping[str, Any] = field(default_factory=dict, hash=False)
    presets: Mapping[str, dict] = field(default_factory=accel_presets, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the types come from the schema (SweepSchema, at compose or in from_config); these are the rest
        methods, ratios, skips = list(self.methods), list(self.keep_ratios), list(self.skip_layers)
        if not methods:
            raise ValueError(f"sweep.methods is empty; list accel presets from: {sorted(self.presets)}")
        for m in methods:
            if m not in self.presets:
                raise ValueError(f"sweep.methods: unknown accel preset {m!r}.{did_you_mean(m, self.presets)} "
                                 f"Valid: {sorted(self.presets)}")
        if dup := _duplicates(methods):
            raise ValueError(f"sweep.methods lists {dup} more than once: {methods}")
        if any(prunes(self.presets[m]) for m in methods) and not ratios:
            raise ValueError("sweep.keep_ratios is empty, but the pruning presets "
                             f"{[m for m in methods if prunes(self.presets[m])]} need at least one keep ratio")
        clean_ratios = []
        for r in ratios:
            if not math.isfinite(r) or not 0.0 < r <= 1.0:
                raise ValueError(f"sweep.keep_ratios: every ratio must be a number in (0, 1], got {r!r} in {ratios}")
            clean_ratios.append(float(r))
        if dup := _duplicates(clean_ratios):
            raise ValueError(f"sweep.keep_ratios lists {dup} more than once: {ratios}")
        if not skips:
            raise ValueError("sweep.skip_layers is empty; use [[]] for no layer skipping")
        clean_skips = []
        for s in skips:
            layers = list(s)
            # a bool passes OmegaConf's element check of a nested List[List[int]] (isinstance): not here
            if any(isinstance(x, bool) or x < 0 for x in layers) or _duplicates(layers):
                raise ValueError(f"sweep.skip_layers: each entry is a list of distinct layer indices >= 0, "
                                 f"got {s!r}")
            clean_skips.append(tuple(sorted(layers)))
        if dup := _duplicates(clean_skips):
            raise ValueError(f"sweep.skip_layers lists {[list(d) for d in dup]} more than once")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"sweep.launcher must be one of {list(LAUNCHERS)}, got {self.launcher!r}"
                             f"{did_you_mean(self.launcher, LAUNCHERS)}")
        if self.n_jobs == 0:
            raise ValueError(f"sweep.n_jobs must be null or a non-zero integer (joblib's n_jobs), got {self.n_jobs!r}")
        for o in self.eval_overrides:
            if "=" not in o:
                raise ValueError(f"sweep.eval_overrides holds Hydra overrides like 'env=goal', got {o!r}")
            if o.lstrip("+~").split("=", 1)[0].split(".")[0] in ("accel", "hydra/launcher"):
                raise ValueError(f"sweep.eval_overrides: {o!r} -- the sweep sets accel and the launcher itself; "
                                 "use sweep.methods / sweep.keep_ratios / sweep.skip_layers / sweep.launcher")
        if self.prune_layer is not None and self.prune_layer < 0:
            raise ValueError(f"sweep.prune_layer must be null or an integer >= 0, got {self.prune_layer!r}")
        object.__setattr__(self, "methods", tuple(methods))
        object.__setattr__(self, "keep_ratios", tuple(clean_ratios))
        object.__setattr__(self, "skip_layers", tuple(clean_skips))
        for o in self.bench_overrides:
            if not o.lstrip("+~").startswith("bench.") or "=" not in o:
                raise ValueError(f"sweep.bench_overrides holds bench.<key>=<value> overrides, got {o!r}")
        object.__setattr__(self, "eval_overrides", tuple(self.eval_overrides))
        self._check_ray()
        object.__setattr__(self, "bench_overrides", tuple(self.bench_overrides))

    def _check_ray(self) -> None:
        """ray: RaySchema's keys; ray_address fills ray.address (two different addresses raise)."""
        from vla_accel.harness.cluster_config import RaySchema

        ray = dict(self.ray or {})
        if self.ray_address and ray.get("address") not in (None, self.ray_address):
            raise ValueError(f"sweep.ray_address={self.ray_address!r} and sweep.ray.address={ray['address']!r} "
                             "differ; set one")
        if self.ray_address:
            ray["address"] = self.ray_address
        try:
            checked = RaySchema(**ray)
        except TypeError as e:
            raise ValueError(f"sweep.ray: {e}") from e
        object.__setattr__(self, "ray", dataclasses.asdict(checked))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SweepSpec:
        """From the `sweep` node (composed through SweepSchema, or a dict: typed here by the same rules);
        unknown keys raise."""
        d = typed(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg))
        known = {"methods", "keep_ratios", "skip_layers", "launcher", "n_jobs", "ray_address", "ray", "bench",
                 "eval_overrides", "bench_overrides", "prune_layer"}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"sweep config: unknown key(s) {unknown}; valid: {sorted(known)}")
        d["eval_overrides"] = tuple(d.get("eval_overrides") or ())
        d["bench_overrides"] = tuple(d.get("bench_overrides") or ())
        return cls(**d)

    @property
    def all_methods(self) -> tuple[str, ...]:
        """The methods with the unaccelerated baseline first (added when not listed)."""
        return (BASELINE, *(m for m in self.methods if m != BASELINE))

    def points(self) -> list[SweepPoint]:
        """Every configuration once, in a stable order: baseline first, then the listed methods."""
        pts = []
        for m in self.all_methods:
            for skip in self.skip_layers:
                if prunes(self.presets[m]):
                    pts.extend(SweepPoint(m, r, skip) for r in self.keep_ratios)
                else:
                    pts.append(SweepPoint(m, None, skip))
        return pts

    def prune_layer_overrides(self, node: str) -> tuple[str, ...]:
        """`<node>.prune_layer=K` when the sweep sets K, else nothing."""
        return () if self.prune_layer is None else (f"{node}.prune_layer={self.prune_layer}",)

    def multirun_parts(self) -> list[MultirunPart]:
        """The Cartesian blocks: pruning presets x keep ratios x skips, and the other presets x skips."""
        skip_values = ",".join(f"[{','.join(map(str, s))}]" for s in self.skip_layers)
        parts = []
        plain = [m for m in self.all_methods if not prunes(self.presets[m])]
        pruned = [m for m in self.all_methods if prunes(self.presets[m])]
        if plain:
            parts.append(MultirunPart(
                "unpruned", (f"accel={','.join(plain)}", f"accel.skip_layers={skip_values}"),
                tuple(p for p in self.points() if p.keep_ratio is None),
                "${accel.name}_${hydra.job.num}"))
        if pruned:
            parts.append(MultirunPart(
                "pruned", (f"accel={','.join(pruned)}", f"accel.keep_ratio={','.join(map(repr, self.keep_ratios))}",
                           f"accel.skip_layers={skip_values}", *self.prune_layer_overrides("accel")),
                tuple(p for p in self.points() if p.keep_ratio is not None),
                "${accel.name}_keep${accel.keep_ratio}_${hydra.job.num}"))
        return parts
