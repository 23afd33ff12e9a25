"""`vla-accel calibrate`: a tiny OpenVLA-style checkpoint with one planted identity layer is ranked, the
ranking JSON is written, and feeding it back through accel.skip_ranking_file skips exactly that layer."""

import json

import numpy as np
import pytest
import torch
from fixtures.tiny_models import model_dict

from vla_accel.cli import main
from vla_accel.data.hdf5_io import DemoWriter

PLANTED = 2  # of 4 layers: zeroed o_proj and down_proj add nothing to the residual stream, x_3 == x_2
INSTRUCTIONS = ["pick up the red block", "open the drawer now"]


def conf_file(name: str) -> str:
    from importlib.resources import files

    return str(files("vla_accel.conf").joinpath(*name.split("/")))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vla_accel.policies.openvla.configuration_openvla import OpenVLAConfig
    from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy

    torch.manual_seed(0)
    policy = OpenVLAPolicy.from_config(OpenVLAConfig.from_dict(model_dict("openvla_tiny", 4)), extra_texts=INSTRUCTIONS)
    with torch.no_grad():
        layer = policy.language_model.model.layers[PLANTED]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    path = tmp_path_factory.mktemp("ckpt")
    policy.save_pretrained(path)
    return path


def write_demos(path, n_demos=3, t=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    with DemoWriter(path, suite="spatial", env_args={"image_size": size}, command="test") as w:
        for i in range(n_demos):
            img = rng.integers(0, 255, (t, size, size, 3), dtype=np.uint8)
            acts = rng.uniform(-1, 1, (t, 7)).astype(np.float32)
            w.add_demo(agentview_image=img, wrist_image=img[:, ::-1], state=rng.normal(size=(t, 8)), actions=acts,
                       executed_actions=acts, rewards=np.zeros(t), dones=np.zeros(t), instruction=INSTRUCTIONS[i % 2],
                       task=f"task{i % 2}", task_id=i % 2, suite="spatial", init_state_id=i, success=True,
                       noise_std=0.0)  # fmt: skip
        w.commit()
    return path


@pytest.fixture(scope="module")
def calibrated(checkpoint, tmp_path_factory):
    """One run of the command on demos: (run dir, ranking dict, printed output)."""
    import io
    from contextlib import redirect_stdout

    root = tmp_path_factory.mktemp("calib")
    demos = write_demos(root / "demos.hdf5")
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["calibrate", f"hydra.run.dir={root / 'run'}", "policy=openvla_tiny", f"policy.path={checkpoint}",
                   f"calibrate.demos={demos}", "calibrate.n_samples=5", "calibrate.output=layer_ranking.json"])
    assert rc == 0
    path = root / "run" / "layer_ranking.json"
    return path, json.loads(path.read_text()), buf.getvalue(), demos


def test_the_planted_identity_layer_is_ranked_least_important(calibrated):
    _, result, _, _ = calibrated
    imp = result["importance"]
    assert result["ranking"][0] == PLANTED and abs(imp[PLANTED]) < 1e-5
    assert all(imp[i] > 1e-4 for i in range(4) if i != PLANTED)
    assert sorted(result["ranking"]) == [0, 1, 2, 3] and [imp[i] for i in result["ranking"]] == sorted(imp)


def test_the_json_has_the_schema(calibrated, checkpoint):
    _, result, out, demos = calibrated
    assert {"num_layers", "importance", "ranking", "num_samples", "n_observations", "policy_path", "policy_type",
            "source", "seed", "command", "date", "formula"} <= set(result)
    assert result["num_layers"] == 4 and len(result["importance"]) == 4
    assert result["num_samples"] == result["n_observations"] == 5  # batch_size 1: one prefill per observation
    assert result["policy_path"] == str(checkpoint.resolve()) and result["policy_type"] == "openvla"
    assert result["source"] == {"demos": [str(demos.resolve())]}
    assert result["command"].startswith("vla-accel calibrate ") and "calibrate.n_samples=5" in result["command"]
    assert "accel.skip_ranking_file=" in out and "accel.skip_num_drop=1" in out and "importance" in out


def test_the_ranking_fed_back_skips_exactly_that_layer(calibrated, checkpoint):
    from omegaconf import OmegaConf
    from vla_accel.policies import make_policy

    from vla_accel.accel.accelerate import accelerate
    from vla_accel.accel.config import AccelConfig
    from vla_accel.accel.preset_config import load_preset

    path, _, _, _ = calibrated
    # the same flat accel group that `vla-accel eval accel.skip_ranking_file=... accel.skip_num_drop=1` composes
    accel = OmegaConf.merge(load_preset("none"),  # the preset as composed (the accel schema's defaults)
                            OmegaConf.from_dotlist([f"skip_ranking_file={path}", "skip_num_drop=1"]))  # fmt: skip
    cfg = OmegaConf.merge(OmegaConf.load(conf_file("policy/openvla_tiny.yaml")), {"path": str(checkpoint)})
    plain, fast = make_policy(cfg, None), make_policy(cfg, None)
    accelerate(fast, AccelConfig.from_dict(OmegaConf.to_container(accel)))
    assert fast.runner.plan(fast.language_model).executed == tuple(i for i in range(4) if i != PLANTED)
    rng = np.random.default_rng(5)
    obs = {"agentview_image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
           "state": rng.normal(size=8).astype(np.float32), "instruction": INSTRUCTIONS[0]}  # fmt: skip
    # skipping an identity layer changes nothing: the same actions as the plain policy
    np.testing.assert_allclose(fast.predict_action_chunk(obs), plain.predict_action_chunk(obs), atol=1e-5)


def test_sampling_is_seeded_and_batches_pool_rows(calibrated, checkpoint, tmp_path):
    from vla_accel.tools.calibrate import sample_demo_observations

    _, result, _, demos = calibrated
    a, b = (sample_demo_observations([demos], 5, seed=0) for _ in range(2))
    c = sample_demo_observations([demos], 5, seed=1)
    same = all(np.array_equal(x["agentview_image"], y["agentview_image"]) for x, y in zip(a, b))
    assert same and not all(np.array_equal(x["agentview_image"], y["agentview_image"]) for x, y in zip(a, c))
    out = tmp_path / "batched.json"
    assert main(["calibrate", f"hydra.run.dir={tmp_path}", "policy=openvla_tiny", f"policy.path={checkpoint}",
                 f"calibrate.demos={demos}", "calibrate.n_samples=5", "calibrate.batch_size=2",
                 f"calibrate.output={out}"]) == 0  # fmt: skip
    batched = json.loads(out.read_text())
    assert batched["num_samples"] == 3 and batched["n_observations"] == 5 and batched["ranking"][0] == PLANTED
    # the same frames, pooled over rows instead of one per prefill: the same importances up to pad handling
    np.testing.assert_allclose(batched["importance"], result["importance"], rtol=0.2, atol=1e-5)


def test_env_first_frames_without_demos(fake_envs, checkpoint, tmp_path):  # noqa: F811
    assert main(["calibrate", f"hydra.run.dir={tmp_path}", "policy=openvla_tiny", f"policy.path={checkpoint}",
                 "env=goal", "calibrate.n_samples=4"]) == 0  # fmt: skip
    result = json.loads((tmp_path / "layer_ranking.json").read_text())
    assert result["ranking"][0] == PLANTED and result["n_observations"] == 4
    assert result["source"]["env"]["suite"] == "goal"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["calibrate.demos=/nonexistent/demos.hdf5"], "calibrate.demos: no demo file at /nonexistent/demos.hdf5"),
        (["calibrate.demos=DEMOS", "calibrate.n_samples=0"], "calibrate.n_samples must be an integer >= 1"),
        (["policy=expert"], "policy.type='expert' has none. Valid types: openvla, cogact"),
        ([], "calibrate needs observations: calibrate.demos="),
        (["calibrate.demos=DEMOS", "env=goal"], "give calibrate.demos or env=<suite>, not both"),
        (["calibrate.demos=DEMOS", "calibrate.n_samples=999"], "calibrate.n_samples=999 exceeds the 18 frames"),
        (["calibrate.demos=DEMOS", "calibrate.output=ranking.txt"], "calibrate.output must name a .json file"),
    ],
)
def test_bad_input_is_one_clear_error(overrides, message, checkpoint, calibrated, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    demos = calibrated[3]
    args = [o.replace("DEMOS", str(demos)) for o in overrides]
    base = ["calibrate", f"hydra.run.dir={tmp_path}", "policy=openvla_tiny", f"policy.path={checkpoint}"]
    if "policy=expert" in args:
        base = base[:2]
    with pytest.raises(SystemExit) as e:
        main([*base, *args])
    assert e.value.code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "layer_ranking.json").exists()


def test_validation_loads_no_model(monkeypatch, tmp_path):
    """The cheap checks fail before make_policy is ever called."""
    from omegaconf import OmegaConf

    from vla_accel import policies
    from vla_accel.tools.calibrate import calibrate

    monkeypatch.setattr(policies, "make_policy", lambda *a, **k: pytest.fail("model loaded before validation"))
    cfg = OmegaConf.create({"policy": OmegaConf.load(conf_file("policy/openvla_tiny.yaml")), "env": None,
                            "calibrate": OmegaConf.load(conf_file("calibrate.yaml")).calibrate})  # fmt: skip
    cfg.policy.path = str(tmp_path)
    cfg.calibrate.demos = str(tmp_path / "missing.hdf5")
    with pytest.raises(ValueError, match="no demo file"):
        calibrate(cfg, tmp_path)


def test_a_cogact_style_policy_is_calibrated_too(calibrated, tmp_path):
    from vla_accel.policies.cogact.configuration_cogact import CogACTConfig
    from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy

    torch.manual_seed(0)
    policy = CogACTPolicy.from_config(CogACTConfig.from_dict(model_dict("cogact_tiny", 4)), extra_texts=INSTRUCTIONS)
    with torch.no_grad():
        policy.language_model.model.layers[1].self_attn.o_proj.weight.zero_()
        policy.language_model.model.layers[1].mlp.down_proj.weight.zero_()
    policy.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "cogact_ranking.json"
    assert main(["calibrate", f"hydra.run.dir={tmp_path}", "policy=cogact_tiny", f"policy.path={tmp_path / 'ckpt'}",
                 f"calibrate.demos={calibrated[3]}", "calibrate.n_samples=3", f"calibrate.output={out}"]) == 0
    result = json.loads(out.read_text())
    assert result["ranking"][0] == 1 and result["policy_type"] == "cogact" and result["num_samples"] == 3
