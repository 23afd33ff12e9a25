"""Training on synthetic HDF5 demos: the loss goes down, checkpoints hold the norm stats, resume
continues exactly where a straight run would be, and `vla-accel train` runs."""

import json
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file
from fixtures.vla_helpers import write_demos

from vla_accel.cli import main as cli_main
from vla_accel.policies.data import DemoDataset, augment
from vla_accel.policies.common.factory import policy_class
from vla_accel.policies.train import build_inputs, compute_loss, run_train


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return write_demos(tmp_path_factory.mktemp("demos") / "demos.hdf5")


def train_cfg(policy, demos, out, *overrides):
    with initialize_config_module("vla_accel.conf", version_base=None):
        return compose("train", overrides=[f"policy={policy}", f"data.paths=[{demos}]", f"output_dir={out}",
                                           "train.progress=false", "train.batch_size=8", "train.warmup_steps=2",
                                           "train.lr=3e-3", *overrides])


def eval_loss(ckpt, kind, dataset):
    policy = policy_class(kind).from_pretrained(ckpt)
    batch = dataset.batch(np.arange(len(dataset)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        loss, _ = compute_loss(policy, kind, build_inputs(policy, batch, "none", gen, 0.9), batch, False, gen)
    return float(loss)


@pytest.mark.parametrize("kind, steps", [("openvla", 25), ("cogact", 25)])
def test_a_few_steps_reduce_the_loss(demos, tmp_path, kind, steps):
    cfg = train_cfg(f"{kind}_tiny", demos, tmp_path, f"train.steps={steps}", f"train.save_every={steps}",
                    "train.keep_checkpoints=5", "train.augment=random_shift")
    # a step-0 checkpoint of the same initial model, for the "before" loss
    cfg0 = train_cfg(f"{kind}_tiny", demos, tmp_path / "zero", "train.steps=1", "train.lr=0")
    before = eval_loss(run_train(cfg0), kind, DemoDataset([demos], ["agentview"], 16 if kind == "cogact" else 1))
    last = run_train(cfg)
    dataset = DemoDataset([demos], ["agentview"], 16 if kind == "cogact" else 1)
    after = eval_loss(last, kind, dataset)
    assert after < 0.8 * before, (before, after)
    saved = json.loads((last / "config.json").read_text())
    assert saved["norm_stats"] == dataset.norm_stats and "spatial" in saved["norm_stats"]
    assert saved["input_image_size"] == 32
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == steps and json.loads(lines[-1])["step"] == steps


def test_resume_continues_exactly_like_a_straight_run(demos, tmp_path):
    straight = run_train(train_cfg("openvla_tiny", demos, tmp_path / "a", "train.steps=4", "train.save_every=2"))
    twin = run_train(train_cfg("openvla_tiny", demos, tmp_path / "b", "train.steps=4", "train.save_every=2",
                               "train.keep_checkpoints=3"))
    shutil.rmtree(twin)  # as if the run had stopped after the step-2 checkpoint
    resumed = run_train(train_cfg("openvla_tiny", demos, tmp_path / "b", "train.steps=4", "train.save_every=2"))
    assert resumed.name == straight.name == "step_0000004"
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    sa, sb = (load_file(str(p / "trainer_state.safetensors")) for p in (straight, resumed))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cli_train_subcommand(demos, tmp_path):
    rc = cli_main(["train", "policy=cogact_tiny", f"data.paths=[{demos}]", f"output_dir={tmp_path / 'out'}",
                   "train.progress=false", "train.batch_size=4", "train.steps=2", "train.freeze_vlm=true",
                   f"hydra.run.dir={tmp_path / 'hydra'}"])
    ckpt = tmp_path / "out" / "checkpoints" / "step_0000002"
    assert rc == 0 and (ckpt / "model.safetensors").is_file()
    trained = load_file(str(ckpt / "model.safetensors"))
    opt = load_file(str(ckpt / "trainer_state.safetensors"))
    assert any(k.startswith("opt.") for k in opt)
    # frozen VLM: the optimizer only holds the DiT's parameters
    n_dit = sum(1 for k in trained if k.startswith("action_model.") and ".cond_norm." not in k)  # not buffers
    assert len({k.split(".")[1] for k in opt if k.startswith("opt.")}) == n_dit


def test_dataset_chunks_pad_with_the_last_action_and_normalise(demos):
    ds = DemoDataset([demos], ["agentview", "wrist"], chunk_size=16)
    assert ds.actions.shape == (4 * 12, 16, 7) and ds.images["wrist"].shape == (48, 32, 32, 3)
    np.testing.assert_array_equal(ds.actions[11, 1:], np.repeat(ds.actions[11, :1], 15, 0))  # last step of demo 0
    assert ds.actions.min() >= -1 and ds.actions.max() <= 1
    assert sorted(ds.instructions) == ["Pick up the red block", "Push the blue cube to the left"]


def test_augmentations_keep_shape_and_are_seeded():
    x = torch.rand(3, 3, 32, 32)
    for mode in ("random_crop", "random_shift"):
        a = augment(x, mode, torch.Generator().manual_seed(1))
        b = augment(x, mode, torch.Generator().manual_seed(1))
        assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    with pytest.raises(ValueError, match="valid"):
        augment(x, "flip", torch.Generator())


def test_init_vlm_from_a_cogact_checkpoint_copies_its_vlm_into_an_openvla_model(demos, tmp_path):
    cog = run_train(train_cfg("cogact_tiny", demos, tmp_path / "cog", "train.steps=2", "train.save_every=2"))
    ovla = run_train(train_cfg("openvla_tiny", demos, tmp_path / "ovla", "train.steps=1", "train.lr=0",
                               f"train.init_vlm_from={cog}"))
    a, b = load_file(str(cog / "model.safetensors")), load_file(str(ovla / "model.safetensors"))
    vlm = [k for k in b if k.startswith(("vision_backbone.", "projector.", "language_model."))]
    assert vlm and all(torch.equal(a[k], b[k][: len(a[k])]) for k in vlm)
    # the OpenVLA model appends 256 action tokens that the CogACT vocabulary lacks
    emb = "language_model.model.embed_tokens.weight"
    assert len(b[emb]) == len(a[emb]) + 256


def test_init_vlm_from_rejects_a_checkpoint_of_another_shape(demos, tmp_path):
    ovla = run_train(train_cfg("openvla_tiny", demos, tmp_path / "a", "train.steps=1"))
    with pytest.raises(ValueError, match="shapes differ|parameters differ"):
        run_train(train_cfg("openvla_tiny", demos, tmp_path / "b", "train.steps=1", f"train.init_vlm_from={ovla}",
                            "policy.model.llm.intermediate_size=40"))


def test_input_probe_logs_real_and_shuffled_losses(demos, tmp_path):
    from vla_accel.policies.train import InputProbe

    run_train(train_cfg("openvla_tiny", demos, tmp_path, "train.steps=4", "train.probe_every=2",
                        "train.probe_size=8"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    probed = [r for r in records if "probe_loss" in r]
    assert [r["step"] for r in probed] == [2, 4]
    assert all(np.isfinite([r["probe_loss"], r["probe_loss_shuffled_images"],
                            r["probe_loss_shuffled_instructions"]]).all() for r in probed)

    dataset = DemoDataset([demos], ["agentview"], 1)
    probe = InputProbe(dataset, 8, seed=0)
    assert not torch.equal(probe.batch.images["agentview"], probe.shuffled_images.images["agentview"])
    assert probe.batch.instructions != probe.shuffled_instructions.instructions
    policy = policy_class("openvla").from_pretrained(tmp_path / "checkpoints" / "step_0000004")
    first, again = probe(policy, "openvla"), probe(policy, "openvla")
    assert first == again  # same frames and noise every time
    # an untrained model's output still depends on the image, so the shuffled loss differs
    assert first["probe_loss_shuffled_images"] != first["probe_loss"]


def test_standardizer_statistics_are_exact_over_the_chosen_frames(demos, tmp_path):
    from vla_accel.policies.common.processor import ProcessedInputs
    from vla_accel.policies.train import StandardizerStatistics

    last = run_train(train_cfg("cogact_tiny", demos, tmp_path, "train.steps=2", "train.standardizer_frames=12"))
    policy = policy_class("cogact").from_pretrained(last)
    visual, condition = policy.projector.out_norm, policy.action_model.cond_norm
    saved = condition.running_mean.clone()
    stats = StandardizerStatistics(DemoDataset([demos], ["agentview"], 16), 12, seed=0, batch_size=5)
    with torch.no_grad():  # scramble them, so that the refresh has to get them back
        visual.running_mean.normal_()
        condition.running_var.fill_(3.0)
    stats(policy)
    assert not policy.training and len(stats.batches) == 3
    with torch.no_grad():  # the 12 frames' centre-cropped inference inputs in one batch
        frames = torch.cat([b.images["agentview"] for b in stats.batches])
        instructions = [i for b in stats.batches for i in b.instructions]
        pixels = policy.processor.image_processor(frames)
        raw = policy.projector.project(policy.vision_backbone(pixels))
        feats = policy.training_cognition(ProcessedInputs(pixels[:, None], *policy.processor.tokenize(instructions)))
    flat = raw.reshape(-1, raw.shape[-1])
    torch.testing.assert_close(visual.running_mean, flat.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(visual.running_var, flat.var(0, unbiased=False), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(condition.running_mean, feats.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(condition.running_var, feats.var(0, unbiased=False), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(saved, feats.mean(0), atol=1e-5, rtol=1e-4)  # what training saved


def test_film_condition_statistics_are_exact_and_set_before_the_visual_tokens(demos, tmp_path):
    from vla_accel.policies.train import StandardizerStatistics

    last = run_train(train_cfg("cogact_tiny", demos, tmp_path, "train.steps=2", "train.standardizer_frames=12",
                               "+policy.model.text_film=true"))
    policy = policy_class("cogact").from_pretrained(last)
    film, visual = policy.vision_film.cond_norm, policy.projector.out_norm
    with torch.no_grad():  # scramble, and give FiLM weights so that the visual tokens depend on its statistics
        film.running_mean.normal_()
        for p in policy.vision_film.encoders.parameters():
            p.normal_(std=0.5)
    stats = StandardizerStatistics(DemoDataset([demos], ["agentview"], 16), 12, seed=0, batch_size=5)
    stats(policy)
    with torch.no_grad():
        inputs = [stats.inputs(policy, b) for b in stats.batches]
        conds = torch.cat([policy.film_condition(policy.prompt_batch(i)) for i in inputs])
        raw = torch.cat([policy.projector.project(policy.vision_features(i.pixel_values,
                                                                         policy.film_condition(policy.prompt_batch(i))))
                         for i in inputs])
    torch.testing.assert_close(film.running_mean, conds.mean(0), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(film.running_var, conds.var(0, unbiased=False), atol=1e-9, rtol=1e-3)
    flat = raw.reshape(-1, raw.shape[-1])  # computed with the refreshed film statistics
    torch.testing.assert_close(visual.running_mean, flat.mean(0), atol=1e-5, rtol=1e-4)


def test_with_a_weight_average_checkpoints_hold_it_and_resume_continues_exactly(demos, tmp_path):
    ema = ("train.ema_decay=0.9", "train.steps=4", "train.save_every=2")
    straight = run_train(train_cfg("cogact_tiny", demos, tmp_path / "a", *ema))
    plain = run_train(train_cfg("cogact_tiny", demos, tmp_path / "p", "train.steps=4", "train.save_every=2"))
    model, state = load_file(str(straight / "model.safetensors")), load_file(str(straight / "trainer_state.safetensors"))
    raw = {k[len("raw."):]: v for k, v in state.items() if k.startswith("raw.")}
    weight = "action_model.blocks.0.attn.proj.weight"
    assert weight in raw and not torch.equal(model[weight], raw[weight])  # the average, not the raw weights
    # the raw weights are those a run without the average reaches (same seed, same batches)
    torch.testing.assert_close(raw[weight], load_file(str(plain / "model.safetensors"))[weight], rtol=0, atol=0)
    assert json.loads((straight / "trainer_state.json").read_text())["ema_updates"] == 4

    twin = run_train(train_cfg("cogact_tiny", demos, tmp_path / "b", *ema, "train.keep_checkpoints=3"))
    shutil.rmtree(twin)  # stopped after the step-2 checkpoint
    resumed = run_train(train_cfg("cogact_tiny", demos, tmp_path / "b", *ema))
    a, b = (load_file(str(p / "model.safetensors")) for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (load_file(str(p / "trainer_state.safetensors")) for p in (straight, resumed))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_from_copies_every_weight_and_starts_a_fresh_schedule(demos, tmp_path):
    source = run_train(train_cfg("cogact_tiny", demos, tmp_path / "src", "train.steps=3", "train.save_every=3"))
    tuned = run_train(train_cfg("cogact_tiny", demos, tmp_path / "ft", "train.steps=1", "train.lr=0",
                                f"train.init_from={source}"))
    a, b = load_file(str(source / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    params = [k for k in a if "running_" not in k]  # the standardisers' statistics are recomputed
    assert params and all(torch.equal(a[k], b[k]) for k in params)
    assert tuned.name == "step_0000001"  # step 0 of its own run, not the source's step 3
    first = json.loads((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["lr"] == 0.0
    with pytest.raises(ValueError, match="give one"):
        run_train(train_cfg("cogact_tiny", demos, tmp_path / "x", "train.steps=1", f"train.init_from={source}",
                            f"train.init_vlm_from={source}"))
    with pytest.raises(ValueError, match="shapes differ|parameters differ"):
        run_train(train_cfg("cogact_tiny", demos, tmp_path / "y", "train.steps=1", f"train.init_from={source}",
                            "policy.model.llm.intermediate_size=40"))


def test_init_from_another_suite_takes_the_source_tokenizer(demos, tmp_path):
    """Fine-tuning on demos with other instructions (another suite): a tokenizer trained on them would
    give other ids, so the policy takes the source's and every weight, the embedding included, carries
    over; the new instructions encode with it and the norm stats are the new demos'."""
    import h5py

    from vla_accel.policies.common.tokenizer import build_tokenizer

    source = run_train(train_cfg("cogact_tiny", demos, tmp_path / "src", "train.steps=2", "train.save_every=2"))
    other = write_demos(tmp_path / "other.hdf5", suite="goal", seed=3)
    with h5py.File(other, "a") as f:
        for g in f["data"].values():
            g.attrs["instruction"] = f"stack the violet prism beside {g.attrs['task']} twice"
    instructions = DemoDataset([other], ["agentview"], 16).instructions
    own = build_tokenizer(extra_texts=instructions).get_vocab()
    src_vocab = json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]
    assert any(own.get(tok) != i for tok, i in src_vocab.items())  # its own tokenizer would differ
    tuned = run_train(train_cfg("cogact_tiny", other, tmp_path / "ft", "train.steps=1", "train.lr=0",
                                f"train.init_from={source}"))
    a, b = load_file(str(source / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if "running_" not in k)
    assert (tuned / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    saved = json.loads((tuned / "config.json").read_text())
    assert list(saved["norm_stats"]) == ["goal"]
    policy = policy_class("cogact").from_pretrained(tuned)
    ids = policy.tokenizer(instructions[0])["input_ids"]
    assert policy.tokenizer.decode(ids) == instructions[0]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        run_train(train_cfg("cogact_tiny", other, tmp_path / "z", "train.steps=1",
                            f"train.init_from={tmp_path / 'nowhere'}"))


def test_several_files_of_one_suite_are_one_dataset_with_pooled_statistics(tmp_path):
    import h5py

    from vla_accel.policies.common.action_tokenizer import compute_norm_stats, normalize_actions

    first = write_demos(tmp_path / "a.hdf5", n_demos=4, seed=0)
    second = write_demos(tmp_path / "b.hdf5", n_demos=2, seed=5)
    other = write_demos(tmp_path / "c.hdf5", n_demos=2, seed=9, suite="goal")
    ds = DemoDataset([first, other, second], ["agentview"], chunk_size=1)
    singles = [DemoDataset([p], ["agentview"], chunk_size=1) for p in (first, other, second)]
    assert sorted(ds.norm_stats) == ["goal", "spatial"]
    raw = np.concatenate([np.asarray(h5py.File(p, "r")[f"data/demo_{i}/actions"])
                          for p, n in ((first, 4), (second, 2)) for i in range(n)])
    pooled = compute_norm_stats(raw.astype(np.float32), n_trajectories=6)
    assert ds.norm_stats["spatial"] == pooled and ds.norm_stats["goal"] == singles[1].norm_stats["goal"]
    # images stay in the order of the files, each row with its own demo's actions and instruction
    np.testing.assert_array_equal(ds.images["agentview"],
                                  np.concatenate([s.images["agentview"] for s in singles]))
    np.testing.assert_array_equal(ds.actions[48:72], singles[1].actions)  # the goal file's 2 x 12 steps
    spatial = np.concatenate([ds.actions[:48], ds.actions[72:]])[:, 0]
    np.testing.assert_allclose(spatial, normalize_actions(raw.astype(np.float32), pooled["action"]))
    assert [ds.instructions[i] for i in ds.instruction_index[:24:12]] == [
        str(h5py.File(first, "r")[f"data/demo_{i}"].attrs["instruction"]) for i in range(2)]


def test_token_drop_cuts_the_prompt_on_its_share_of_steps_and_is_refused_for_openvla(demos, tmp_path):
    drop = ("train.token_drop_prob=1.0", "train.token_drop_layer=1", "train.token_drop_keep=[0.25]")
    cut = run_train(train_cfg("cogact_tiny", demos, tmp_path / "cut", "train.steps=3", "train.save_every=3", *drop))
    plain = run_train(train_cfg("cogact_tiny", demos, tmp_path / "plain", "train.steps=3", "train.save_every=3"))
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    n_visual = policy_class("cogact").from_pretrained(cut).config.num_visual_tokens
    assert [r["kept_visual"] for r in records] == [round(0.25 * n_visual)] * 3
    weight = "action_model.blocks.0.attn.proj.weight"
    a, b = (load_file(str(p / "model.safetensors"))[weight] for p in (cut, plain))
    assert not torch.equal(a, b)  # the cut prompts trained the policy differently
    with pytest.raises(ValueError, match="CogACT-style"):
        run_train(train_cfg("openvla_tiny", demos, tmp_path / "ov", "train.steps=1", *drop))


def test_token_drop_layer_beyond_the_llama_is_refused_before_training(demos, tmp_path):
    cfg = train_cfg("cogact_tiny", demos, tmp_path / "bad", "train.steps=1", "train.token_drop_prob=0.5")
    cfg.train.token_drop_layer = int(cfg.policy.model.llm.num_layers)  # K = L: no layer after the cut
    with pytest.raises(ValueError, match="token drop layer must be in"):
        run_train(cfg)
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()  # no step ran
