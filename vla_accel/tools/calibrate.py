"""`vla-accel calibrate`: measure EfficientVLA's layer importance on a policy and write the ranking.

    vla-accel calibrate policy=openvla_default policy.path=ckpt calibrate.demos=demos.hdf5 \
        calibrate.n_samples=64 calibrate.output=layer_ranking.json
    vla-accel calibrate policy=cogact_default policy.path=ckpt env=goal      # env first frames instead

The observations (frames + instruction + state) are drawn with a seeded generator either from the
demonstration file(s) (`calibrate.demos`, single frames anywhere in any demo) or, without demos, from the
first frames of the `env` suite(s) at seeded init states. Each goes through the policy's own
`predict_action_chunk` (vla_accel.accel.layer_skip.calibrate_policy_layer_skip), so the importance
I(l) = 1 - mean cos(x_l, x_{l+1}) is measured on the policy's real prompts. The ranking JSON is what
`accel.skip_ranking_file=<path> accel.skip_num_drop=N` reads.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from vla_accel.conf import validated
from vla_accel.policies.capabilities import require_runner
from vla_accel.tools.calibrate_config import CalibrateSchema

# Policy types whose LLM runs through the runner seam (docs/interfaces.md): the only ones with layers to rank.
LLM_POLICY_TYPES = ("openvla", "cogact")
NUM_INIT_STATES = 50  # fixed evaluation init states per task (docs/interfaces.md, Environments)


# ------------------------------------------------------------------ validation (nothing heavy loaded)


def demo_paths(demos) -> list[Path]:
    """calibrate.demos as a list of paths: null -> [], a string -> [it], a list -> each."""
    if demos is None:
        return []
    if isinstance(demos, (str, Path)):
        items = [demos]
    elif isinstance(demos, (list, tuple, ListConfig)):
        items = list(demos)
    else:
        # ValueError, not TypeError: the cli prints a ValueError as one clear line
        raise ValueError(f"calibrate.demos must be an HDF5 path or a list of them, got {demos!r}")  # noqa: TRY004
    if not items:
        raise ValueError("calibrate.demos is an empty list; give at least one HDF5 file (or null to use env)")
    return [Path(str(p)) for p in items]


def check_calibrate_cfg(cfg: DictConfig) -> list[Path]:
    """Every check that needs no model: returns the demo paths (empty: the env's first frames)."""
    from vla_accel.policies import policy_spec

    c = cfg.calibrate
    validated(CalibrateSchema, c)  # the ranges (and the types, for a section built without the schema)
    if "policy" not in cfg or cfg.policy is None:
        raise ValueError(f"choose a policy: policy=<config> (one of the types {', '.join(LLM_POLICY_TYPES)})")
    policy_spec(cfg.policy)  # an unknown type: the registry's did-you-mean
    kind = cfg.policy.type
    if kind not in LLM_POLICY_TYPES:
        raise ValueError(
            f"calibrate ranks the layers of a VLA's language model; policy.type={kind!r} has none. "
            f"Valid types: {', '.join(LLM_POLICY_TYPES)}"
        )
    if not cfg.policy.get("path"):
        raise ValueError("calibrate needs a trained checkpoint: policy.path=<checkpoint directory> "
                         "(importance measured on random weights says nothing about the trained model)")
    if not Path(str(cfg.policy.path)).exists():
        raise ValueError(f"policy.path {cfg.policy.path} does not exist")
    paths = demo_paths(c.demos)
    for p in paths:
        if not p.is_file():
            raise ValueError(f"calibrate.demos: no demo file at {p}")
    has_env = cfg.get("env") is not None
    if paths and has_env:
        raise ValueError("give calibrate.demos or env=<suite>, not both: the observations come from one source")
    if not paths and not has_env:
        raise ValueError("calibrate needs observations: calibrate.demos=<demos.hdf5> (frames from demonstrations) "
                         "or env=<suite> (first frames at seeded init states)")
    return paths


# ------------------------------------------------------------------ observations


def sample_demo_observations(paths: list[Path], n_samples: int, seed: int) -> list[dict]:
    """``n_samples`` distinct frames drawn uniformly (seeded) from all demos of all files, in file order.
    Each is an unbatched env-style obs: images (H, W, 3) uint8, state (8,), instruction str."""
    from vla_accel.data.hdf5_io import DemoFile

    files = [DemoFile(p) for p in paths]  # validates each file's layout
    try:
        index = [(f, name, t) for f in files for name, t in f.sample_index()]
        if n_samples > len(index):
            raise ValueError(f"calibrate.n_samples={n_samples} exceeds the {len(index)} frames in "
                             f"{', '.join(map(str, paths))}")
        chosen = sorted(np.random.default_rng(seed).choice(len(index), n_samples, replace=False).tolist())
        observations, loaded = [], {}
        for i in chosen:
            f, name, t = index[i]
            key = (str(f.path), name)
            if key not in loaded:  # one demo's arrays in memory at a time
                loaded = {key: f[name]}
            d = loaded[key]
            observations.append({"agentview_image": d.agentview_image[t], "wrist_image": d.wrist_image[t],
                                 "state": d.state[t], "instruction": d.instruction})  # fmt: skip
        return observations
    finally:
        for f in files:
            f.close()


def sample_env_observations(env_cfg: DictConfig, n_samples: int, seed: int, image_size: int | None) -> list[dict]:
    """First frames: sample i takes (suite, task) pair i mod P and the (i div P)-th of a seeded permutation
    of that task's 50 init states, so the samples cover every task before repeating one."""
    from vla_accel import envs
    from vla_accel.harness.task_selection import env_kwargs, resolve_suites, resolve_tasks

    pairs = [(s, t) for s in resolve_suites(env_cfg.suite) for t in resolve_tasks(s, env_cfg.task_ids)]
    if n_samples > NUM_INIT_STATES * len(pairs):
        raise ValueError(f"calibrate.n_samples={n_samples} exceeds the {NUM_INIT_STATES} init states x "
                         f"{len(pairs)} tasks of env.suite={env_cfg.suite}")
    kwargs = env_kwargs(env_cfg)
    if image_size is not None:
        kwargs["image_size"] = image_size  # the policy checks the frame size it was trained on
    rng = np.random.default_rng(seed)
    init_states = [rng.permutation(NUM_INIT_STATES) for _ in pairs]
    observations = []
    for p, (suite, task) in enumerate(pairs):
        ids = [int(init_states[p][i // len(pairs)]) for i in range(p, n_samples, len(pairs))]
        if not ids:
            continue
        env = envs.make_env(suite, task.task_id, **kwargs)
        try:
            for init_state_id in ids:
                obs, _ = env.reset(seed=seed, options={"init_state_id": init_state_id})
                observations.append(obs)
        finally:
            env.close()
    return observations


def batched(observations: list[dict], batch_size: int) -> list[dict]:
    """Groups of up to ``batch_size`` observations as batched obs (images (B, H, W, 3), instruction list)."""
    if batch_size == 1:
        return list(observations)
    groups = []
    for start in range(0, len(observations), batch_size):
        chunk = observations[start : start + batch_size]
        group = {}
        for key in chunk[0]:
            values = [o[key] for o in chunk]
            if key == "instruction":
                group[key] = [str(v) for v in values]
            else:
                shapes = {np.shape(v) for v in values}
                if len(shapes) > 1:
                    raise ValueError(f"calibrate.batch_size={batch_size}: {key} comes in shapes {sorted(shapes)}; "
                                     "use calibrate.batch_size=1")
                group[key] = np.stack(values)
        groups.append(group)
    return groups


# ------------------------------------------------------------------ the command


def output_path(output: str, output_dir: Path) -> Path:
    """An absolute calibrate.output as given; a relative one inside the run's output directory."""
    p = Path(str(output)).expanduser()
    return p if p.is_absolute() else Path(output_dir) / p


def suggested_num_drop(num_layers: int, requested: int | None) -> int:
    """N for the printed override: the request, else 1/8 of the layers (EfficientVLA: 32 -> 28), >= 1."""
    n = requested if requested is not None else max(1, num_layers // 8)
    return min(n, num_layers - 1)


def ranking_table(result: dict) -> Table:
    table = Table(title="LLM layers, least important first",
                  caption=f"I(l) = 1 - mean cos(x_l, x_l+1) over {result['num_samples']} prefill(s)")
    for col, just in (("rank", "right"), ("layer", "right"), ("importance", "right"), ("mean cos", "right")):
        table.add_column(col, justify=just)
    for rank, layer in enumerate(result["ranking"]):
        imp = result["importance"][layer]
        table.add_row(str(rank), str(layer), f"{imp:.6f}", f"{1.0 - imp:.6f}")
    return table


def calibrate(cfg: DictConfig, output_dir: str | Path, console: Console | None = None, command: str = "",
              policy_name: str | None = None) -> dict:
    """Validate, sample observations, rank the layers, write the JSON; returns the written dict."""
    import torch

    from vla_accel.accel.layer_skip import calibrate_policy_layer_skip
    from vla_accel.policies import make_policy

    console = console or Console()
    paths = check_calibrate_cfg(cfg)
    c = cfg.calibrate
    out = output_path(c.output, Path(output_dir))

    policy = make_policy(cfg.policy, None).eval()
    require_runner(policy, "calibrate (nothing to calibrate otherwise)")
    if paths:
        observations = sample_demo_observations(paths, int(c.n_samples), int(c.seed))
        source = {"demos": [str(p.resolve()) for p in paths]}
    else:
        size = getattr(policy.config, "input_image_size", None)
        observations = sample_env_observations(cfg.env, int(c.n_samples), int(c.seed), size)
        source = {"env": OmegaConf.to_container(cfg.env, resolve=True)}

    console.print(f"calibrating {len(observations)} observations on {cfg.policy.path} ...")
    with torch.inference_mode():
        result = calibrate_policy_layer_skip(policy, batched(observations, int(c.batch_size)), out)
    result.update({
        "n_observations": len(observations),
        "batch_size": int(c.batch_size),
        "seed": int(c.seed),
        "policy_type": str(cfg.policy.type),
        "policy_path": str(Path(str(cfg.policy.path)).resolve()),
        "source": source,
        "command": command,
    })  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")

    console.print(ranking_table(result))
    n = suggested_num_drop(result["num_layers"], c.suggest_num_drop)
    override = f"accel.skip_ranking_file={shlex.quote(str(out.resolve()))} accel.skip_num_drop={n}"
    console.print(f"ranking: {out}")
    console.print(f"skip the {n} least important layer(s) {result['ranking'][:n]} with:\n  {override}",
                  soft_wrap=True)  # fmt: skip
    policy_arg = f"policy={policy_name}" if policy_name else f"policy.type={cfg.policy.type}"
    console.print(f"e.g. vla-accel eval {policy_arg} policy.path={cfg.policy.path} {override}",
                  soft_wrap=True)  # fmt: skip
    return result


def run(cfg: DictConfig) -> None:
    """The Hydra task function of `vla-accel calibrate` (a relative output goes to Hydra's output dir)."""
    from hydra.core.hydra_config import HydraConfig

    command = shlex.join(["vla-accel", "calibrate", *sys.argv[1:]])
    hc = HydraConfig.get()
    calibrate(cfg, Path(hc.runtime.output_dir), Console(), command=command,
              policy_name=hc.runtime.choices.get("policy"))
