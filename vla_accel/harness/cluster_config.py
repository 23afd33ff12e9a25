"""The schema of the Ray settings shared by `vla-accel eval` (`eval.ray.*`) and `vla-accel sweep`
(`sweep.ray.*`): which cluster, how its workers get the environment, code and checkpoint, and what
each job asks Ray for. vla_accel.harness.dispatch reads them; Ray itself is imported only there.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass
class RaySchema:
    # null: start a local Ray instance; "auto" / "HOST:6379" (the driver runs on a node of the cluster)
    # or "ray://HOST:10001" (Ray Client, from a machine outside it)
    address: Optional[str] = None
    # a file holding the cluster's auth token (`ray get-auth-token` prints it); RAY_AUTH_TOKEN or
    # RAY_AUTH_TOKEN_PATH in the driver's environment work too. The token itself never goes in a config.
    auth_token_path: Optional[str] = None
    num_cpus: float = 1.0  # CPUs each job (each shard) asks Ray for
    num_gpus: Optional[float] = None  # GPUs each job asks for; null = 1 when policy.device is cuda*, else 0
    env_vars: Dict[str, str] = field(default_factory=dict)  # more environment for the workers (runtime_env)
    ship_code: bool = True  # send this vla_accel (code + configs) to the workers (runtime_env py_modules)
    # checkpoints up to this size go to the workers through Ray's object store; a larger one must be
    # readable at its absolute path on every node (shared storage); 0 = never ship
    max_ship_mb: float = 256.0
    local_num_cpus: Optional[int] = None  # a local instance only (address null): CPUs it offers (null = all)

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or (self.num_gpus is not None and self.num_gpus < 0):
            raise ValueError(f"ray.num_cpus and ray.num_gpus must be >= 0, got {self.num_cpus!r}, {self.num_gpus!r}")
        if self.max_ship_mb < 0:
            raise ValueError(f"ray.max_ship_mb must be >= 0, got {self.max_ship_mb!r}")
        if self.local_num_cpus is not None and self.local_num_cpus < 1:
            raise ValueError(f"ray.local_num_cpus must be null or >= 1, got {self.local_num_cpus!r}")
