"""collect -> train -> eval through the CLI on the real tabletop suite (slow: MuJoCo rendering)."""

import json

import pytest

from vla_accel.cli import main as cli_main


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["openvla", "cogact"])
def test_collect_train_eval(tmp_path, kind):
    demos = tmp_path / "demos.hdf5"
    assert cli_main(["collect", "env=spatial", "env.task_ids=[0]", "collect.n_demos_per_task=2",
                     "collect.progress=false", f"collect.output={demos}", f"hydra.run.dir={tmp_path / 'c'}"]) == 0
    assert cli_main(["train", f"policy={kind}_tiny", f"data.paths=[{demos}]", "train.steps=6",
                     "train.batch_size=4", "train.progress=false", f"output_dir={tmp_path / 'train'}",
                     f"hydra.run.dir={tmp_path / 't'}"]) == 0
    assert cli_main(["eval", "env=spatial", "env.task_ids=[0]", f"policy={kind}_tiny",
                     f"policy.path={tmp_path / 'train'}", "eval.n_episodes=1", "eval.max_steps=12",
                     "eval.progress=false", f"hydra.run.dir={tmp_path / 'e'}"]) == 0
    info = json.loads((tmp_path / "e" / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1 and info["per_episode"][0]["n_steps"] == 12
