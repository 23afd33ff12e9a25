import json

import torch
from fixtures.tiny_models import make_llama, make_prompt

from vla_accel.accel.config import AccelConfig, LayerSkipConfig, resolve_plan
from vla_accel.accel.layer_skip import calibrate_layer_skip, layer_importance


def test_calibration_finds_a_planted_identity_layer(tmp_path):
    llm = make_llama(num_layers=6, seed=3)
    with torch.no_grad():  # layer 4 adds nothing to the residual stream: x_5 == x_4, I(4) = 0
        llm.model.layers[4].self_attn.o_proj.weight.zero_()
        llm.model.layers[4].mlp.down_proj.weight.zero_()
    samples = [make_prompt(seed=s) for s in range(3)]
    imp = layer_importance(llm, samples)
    assert imp.shape == (6,) and abs(float(imp[4])) < 1e-6 and (imp[[0, 1, 2, 3, 5]] > 1e-4).all()
    path = tmp_path / "ranking.json"
    result = calibrate_layer_skip(llm, samples, path)
    assert result["ranking"][0] == 4 and json.loads(path.read_text())["num_layers"] == 6
    assert LayerSkipConfig(ranking_file=str(path), num_drop=1).resolve(6) == (4,)
    plan = resolve_plan(AccelConfig(layer_skip=LayerSkipConfig(ranking_file=str(path), num_drop=2)), 6)
    assert 4 not in plan.executed and len(plan.executed) == 4


def test_skipping_the_identity_layer_changes_nothing():
    from vla_accel.policies.llm_runner import HFRunner
    from vla_accel.accel.runner import AcceleratedRunner

    llm = make_llama(num_layers=6, seed=3)
    with torch.no_grad():
        llm.model.layers[4].self_attn.o_proj.weight.zero_()
        llm.model.layers[4].mlp.down_proj.weight.zero_()
    prompt = make_prompt()
    ref = HFRunner().prefill(llm, **prompt)
    got = AcceleratedRunner(AccelConfig(layer_skip=LayerSkipConfig(layers=(4,)))).prefill(llm, **prompt)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert not got.cache.kv.layers[4].is_initialized


def test_calibration_on_a_policy_records_its_prompts(tmp_path):
    from fixtures.tiny_models import obs, tiny_openvla

    from vla_accel.accel.layer_skip import calibrate_policy_layer_skip
    from vla_accel.policies.llm_runner import HFRunner

    policy = tiny_openvla()
    result = calibrate_policy_layer_skip(policy, [obs(seed=s) for s in range(2)], tmp_path / "rank.json")
    assert result["num_samples"] == 2 and sorted(result["ranking"]) == [0, 1, 2, 3]
    assert isinstance(policy.runner, HFRunner)
