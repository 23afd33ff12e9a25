"""`vla-accel serve` end to end: a tiny checkpoint served by the command, reached by the client."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from fixtures.tiny_models import obs as make_obs
from fixtures.tiny_models import tiny_openvla

from vla_accel.runtime.client import WebsocketClientPolicy


def serve_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "vla_accel.cli", "serve", *overrides]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    tiny_openvla().save_pretrained(path)
    return path


def test_serve_command_serves_until_sigterm(checkpoint, tmp_path):
    cmd = serve_command("policy=openvla_tiny", f"policy.path={checkpoint}", "accel=fastv", "accel.keep_ratio=0.25",
                        "accel.prune_layer=2", "serve.port=0", "serve.torch_threads=1", f"hydra.run.dir={tmp_path}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        port, lines, deadline = None, [], time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port is not None, "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200
        with WebsocketClientPolicy("127.0.0.1", port) as client:
            assert client.get_server_metadata()["accel"]["pruning"]["keep_ratio"] == 0.25
            out = client.infer({k: v for k, v in make_obs(0).items()})
            assert out["actions"].shape == (1, 7) and np.isfinite(out["actions"]).all()
            assert out["accel_stats"]["tokens_kept"] == out["accel_stats"]["tokens"] - 12  # 4 of 16 visual kept
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_the_scripted_expert():
    from hydra import compose, initialize_config_module

    from vla_accel.runtime.serving.serve_cli import build_served_policy

    with initialize_config_module(config_module="vla_accel.conf", version_base=None):
        cfg = compose(config_name="serve", overrides=["policy=expert"])
    assert cfg.serve.host == "127.0.0.1"  # loopback unless asked otherwise
    with pytest.raises(ValueError, match="cannot be served"):
        build_served_policy(cfg)


def test_the_token_comes_from_the_environment_and_is_required_off_loopback(monkeypatch):
    from hydra import compose, initialize_config_module

    from vla_accel.runtime.serving.serve_cli import serve_settings

    with initialize_config_module(config_module="vla_accel.conf", version_base=None):
        cfg = compose(config_name="serve", overrides=["policy=openvla_tiny", "serve.host=0.0.0.0"])
    monkeypatch.delenv("VLA_ACCEL_AUTH_TOKEN", raising=False)
    with pytest.raises(ValueError, match="auth_token"):
        serve_settings(cfg.serve)
    monkeypatch.setenv("VLA_ACCEL_AUTH_TOKEN", "t" * 24)
    assert serve_settings(cfg.serve).auth_token == "t" * 24
