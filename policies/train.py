"""Train an OpenVLA-style or CogACT-style policy on HDF5 demonstrations (hydra config `train`).

OpenVLA-style: teacher-forced cross-entropy on the action tokens. CogACT-style: the DiT's
epsilon-prediction MSE, with the VLM trained end to end or frozen (`train.freeze_vlm`). AdamW with
linear warm-up then cosine decay, gradient clipping, image augmentation (random crop ~90% area or
random shift), tqdm progress with the loss, periodic checkpoints (`save_pretrained` directories plus
the trainer state: optimizer, step and every RNG, in safetensors + json, no pickle) and resume from
the newest checkpoint. q01/q99 norm stats come from the demos and are stored in the checkpoint.

    vla-accel train data.paths=[demos.hdf5] policy=openvla_default
    python -m vla_accel.policies.train policy=cogact_tiny train.steps=20
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vla_accel.conf import validated
from vla_accel.policies.common.factory import policy_class
from vla_accel.policies.common.image_processor import crop_resize
from vla_accel.policies.common.observation import ParsedObs
from vla_accel.policies.data import Batch, DemoDataset, augment
from vla_accel.policies.common.processor import ProcessedInputs
from vla_accel.policies.train_config import TrainSchema
from vla_accel.policies.token_drop import TokenDrop, check_drop_layer
from vla_accel.policies.weight_average import RAW_PREFIX, WeightAverage

STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_inputs(policy, batch: Batch, aug: str, generator: torch.Generator, crop_area: float) -> ProcessedInputs:
    proc = policy.processor.image_processor
    per_cam = []
    for cam in policy.config.cameras:
        x = augment(proc.to_float(batch.images[cam]), aug, generator, crop_area)
        per_cam.append(proc.normalize(crop_resize(x, proc.image_size)))
    ids, masks = policy.processor.tokenize(batch.instructions)
    return ProcessedInputs(torch.stack(per_cam, 1).to(policy.device), ids, masks)


def compute_loss(policy, kind: str, inputs: ProcessedInputs, batch: Batch, freeze_vlm: bool,
                 generator: torch.Generator, token_drop: tuple[torch.Tensor, int] | None = None
                 ) -> tuple[torch.Tensor, dict]:
    if kind == "openvla":
        tokens = torch.from_numpy(policy.action_tokenizer.encode(batch.actions[:, 0].numpy()))
        loss, acc = policy.action_token_loss(inputs, tokens.to(policy.device))
        return loss, {"acc": float(acc)}
    return policy.diffusion_loss(inputs, batch.actions, freeze_vlm=freeze_vlm, generator=generator,
                                 token_drop=token_drop), {}


# --- input probe -----------------------------------------------------------------------------------
class InputProbe:
    """Does the policy use its inputs? The loss on a fixed set of demo frames, as they are and with the
    images (or the instructions) handed to other rows. A policy that has learnt to see gets a larger
    loss on shuffled images; equal losses mean the action does not depend on them (a from-scratch VLM
    can collapse to that within a few dozen steps). Same frames, timesteps and noise at every probe."""

    def __init__(self, dataset: DemoDataset, size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(dataset), size=min(size, len(dataset)), replace=False)
        self.batch = dataset.batch(idx)
        # Hand each row the images of a row from another demo moment: a roll by half the probe.
        perm = np.roll(np.arange(len(idx)), max(1, len(idx) // 2))
        self.shuffled_images = Batch({c: v[perm] for c, v in self.batch.images.items()},
                                     self.batch.instructions, self.batch.actions)
        self.shuffled_instructions = Batch(self.batch.images, [self.batch.instructions[i] for i in perm],
                                           self.batch.actions)
        self.seed = seed

    def loss(self, policy, kind: str, batch: Batch) -> float:
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            inputs = build_inputs(policy, batch, "none", gen, 1.0)
            loss, _ = compute_loss(policy, kind, inputs, batch, False, gen)
        return float(loss)

    def __call__(self, policy, kind: str) -> dict:
        was_training = policy.training
        policy.eval()
        try:
            return {"probe_loss": self.loss(policy, kind, self.batch),
                    "probe_loss_shuffled_images": self.loss(policy, kind, self.shuffled_images),
                    "probe_loss_shuffled_instructions": self.loss(policy, kind, self.shuffled_instructions)}
        finally:
            policy.train(was_training)


class StandardizerStatistics:
    """Exact statistics for the batch-statistics standardisers (policies/common/standardizer.py) of the
    visual tokens (`standardize_visual`) and of a CogACT head's condition (`standardize_condition`):
    the running averages lag a model that is still learning, so before every probe and checkpoint they
    are recomputed over fixed demo frames processed as at inference (centre crop, no augmentation), in
    the order they feed each other: the instruction embedding of `text_film`, the visual tokens, the
    cognition feature."""

    def __init__(self, dataset: DemoDataset, n_frames: int, seed: int, batch_size: int = 32) -> None:
        rng = np.random.default_rng(seed + 7)
        idx = rng.choice(len(dataset), size=min(n_frames, len(dataset)), replace=False)
        self.batches = [dataset.batch(idx[i : i + batch_size]) for i in range(0, len(idx), batch_size)]

    def __call__(self, policy) -> None:
        film = _standardizer(getattr(policy, "vision_film", None), "cond_norm")
        visual = _standardizer(policy.projector, "out_norm")
        condition = _standardizer(getattr(policy, "action_model", None), "cond_norm")
        if film is None and visual is None and condition is None:
            return
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad():
                inputs = [self.inputs(policy, b) for b in self.batches]
                # The raw instruction embeddings (None without text_film): film's input, fixed here.
                conds = [policy.film_condition(policy.prompt_batch(i)) for i in inputs]
                if film is not None:  # first: the visual tokens depend on it
                    film.set_statistics(torch.cat(conds))
                if visual is not None:
                    visual.set_statistics(torch.cat([
                        policy.projector.project(policy.vision_features(i.pixel_values, c))
                        for i, c in zip(inputs, conds)]))
                if condition is not None:
                    condition.set_statistics(torch.cat([policy.training_cognition(i) for i in inputs]))
        finally:
            policy.train(was_training)

    @staticmethod
    def inputs(policy, batch: Batch) -> ProcessedInputs:
        """The frames as the policy's processor prepares them at inference."""
        images = {c: v.numpy() for c, v in batch.images.items()}
        return policy.processor(ParsedObs(images, batch.instructions, batched=True), policy.device)


def _standardizer(module, name: str):
    from vla_accel.policies.common.standardizer import FeatureStandardizer

    norm = getattr(module, name, None)
    return norm if isinstance(norm, FeatureStandardizer) else None


# --- checkpoints -----------------------------------------------------------------------------------
def checkpoint_dirs(out: Path) -> list[Path]:
    ckpts = [p for p in (out / "checkpoints").glob("step_*") if (p / STATE_JSON).is_file()]
    return sorted(ckpts, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(out: Path, policy, optimizer, step: int, gens: dict[str, torch.Generator], keep: int,
                    extra_tensors: dict[str, torch.Tensor] | None = None, extra_meta: dict | None = None) -> Path:
    """`policy.save_pretrained` plus the trainer state (and `extra_*`: a weight average's raw weights)."""
    path = out / "checkpoints" / f"step_{step:07d}"
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    opt = optimizer.state_dict()
    tensors = {f"opt.{i}.{k}": v.detach().cpu().contiguous() for i, s in opt["state"].items()
               for k, v in s.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update({f"rng.{name}": g.get_state() for name, g in gens.items()})
    tensors.update(extra_tensors or {})
    save_file(tensors, str(tmp / STATE_TENSORS))
    np_state = np.random.get_state()
    meta = {"step": step, "param_groups": opt["param_groups"],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            **(extra_meta or {})}
    (tmp / STATE_JSON).write_text(json.dumps(meta))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old)
    return path


def load_trainer_state(path: Path, optimizer, gens: dict[str, torch.Generator],
                       ema: WeightAverage | None = None) -> int:
    """Restore what `save_checkpoint` saved; returns the step. With `ema`, the policy (loaded from the
    checkpoint: the average) gets its raw weights back and the average its update count."""
    tensors = load_file(str(path / STATE_TENSORS))
    meta = json.loads((path / STATE_JSON).read_text())
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    for name, g in gens.items():
        g.set_state(tensors[f"rng.{name}"])
    n = meta["numpy_rng"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = meta["python_rng"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if ema is not None and ema.restore_raw(tensors):
        ema.updates = int(meta.get("ema_updates", 0))
    elif ema is None and any(k.startswith(RAW_PREFIX) for k in tensors):
        print(f"note: {path} was saved with a weight average (train.ema_decay) and this run has none: "
              "training goes on from the average, not from the raw weights")
    return int(meta["step"])


# --- the loop --------------------------------------------------------------------------------------
def make_policy_for_training(cfg: DictConfig, dataset: DemoDataset, tokenizer_from: str | Path | None = None):
    """A fresh policy for `dataset`. With `tokenizer_from` (train.init_from's checkpoint) it takes that
    checkpoint's tokenizer instead of training one on these demos' instructions: the BPE is byte-level,
    so any instruction encodes, and the source's embedding rows keep their meaning, as a fine-tuned VLA
    keeps its base model's tokenizer (OpenVLA fine-tuned on LIBERO keeps Llama 2's)."""
    kind = cfg.policy.type
    cls = policy_class(kind)
    model_cfg = OmegaConf.to_container(cfg.policy.model, resolve=True)
    config = cls.config_class.from_dict(model_cfg)
    config.norm_stats = dataset.norm_stats
    if config.input_image_size is not None:
        config.input_image_size = dataset.image_size
    if cfg.train.augment == "random_crop" and config.crop_scale == 1.0:
        config.crop_scale = cfg.train.crop_area  # evaluate on the centre crop, as OpenVLA does
    if tokenizer_from is not None:
        from vla_accel.policies.common.tokenizer import load_tokenizer

        return cls(config, load_tokenizer(Path(tokenizer_from)))
    return cls.from_config(config, extra_texts=dataset.instructions)


VLM_PREFIXES = ("vision_backbone.", "projector.", "language_model.")


def init_vlm_from(policy, source: str | Path) -> int:
    """Copy the VLM (vision backbone, projector, Llama) of another checkpoint of either type into
    `policy`: OpenVLA and CogACT start from a trained VLM (Prismatic), not from scratch, and so can
    ours. The source's tokens must keep their ids here; a CogACT source lacks the 256 action tokens
    that an OpenVLA model appends, so only the shared rows of the embedding and LM head are copied
    and the action-token rows keep their fresh init. Anything else that differs -> ValueError.
    Returns the number of tensors copied."""
    return _copy_weights(policy, source, "train.init_vlm_from", lambda k: k.startswith(VLM_PREFIXES))


def init_from(policy, source: str | Path) -> int:
    """Copy every weight of a checkpoint of the same policy and shape into `policy`: fine-tuning a trained
    policy (on more demos, or on another suite's, with a fresh learning-rate schedule) instead of
    resuming its run. The trainer builds `policy` with the source's tokenizer
    (`make_policy_for_training`); the norm stats stay those of this run's demos. Anything that
    differs -> ValueError. Returns the count."""
    return _copy_weights(policy, source, "train.init_from", lambda k: True)


def _copy_weights(policy, source: str | Path, option: str, selected) -> int:
    from vla_accel.policies.common.tokenizer import load_tokenizer
    from vla_accel.policies.common.vlm import WEIGHTS_FILE

    source = Path(source)
    if not (source / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{option}: no {WEIGHTS_FILE} in {source}")
    src_vocab, own_vocab = load_tokenizer(source).get_vocab(), policy.tokenizer.get_vocab()
    if any(own_vocab.get(tok) != i for tok, i in src_vocab.items()):
        raise ValueError(f"{option}: {source} has another tokenizer vocabulary (other demos' "
                         "instructions or bpe_vocab_size); train on the same data and config")
    weights = {k: v for k, v in load_file(str(source / WEIGHTS_FILE)).items() if selected(k)}
    own = {k: v for k, v in policy.state_dict().items() if selected(k)}
    if weights.keys() != own.keys():
        missing, extra = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
        raise ValueError(f"{option}: parameters differ from {source}: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    vocab_rows = {k for k in own if k.endswith(("embed_tokens.weight", "lm_head.weight"))}
    bad = [k for k in own if own[k].shape != weights[k].shape
           and not (k in vocab_rows and own[k].shape[1:] == weights[k].shape[1:]
                    and weights[k].shape[0] <= own[k].shape[0])]
    if bad:
        raise ValueError(f"{option}: shapes differ from {source} at {bad[:3]} "
                         f"({tuple(own[bad[0]].shape)} here, {tuple(weights[bad[0]].shape)} there)")
    with torch.no_grad():
        for k, v in own.items():
            v[: weights[k].shape[0]].copy_(weights[k])
    return len(own)


@dataclass
class _Training:
    """Everything one training run holds between its steps."""

    cfg: DictConfig
    out: Path
    dataset: DemoDataset
    policy: Any
    params: list
    freeze: bool
    optimizer: torch.optim.Optimizer
    scheduler: Any
    gens: dict[str, torch.Generator]
    step: int
    last: Path | None  # the newest checkpoint directory
    probe: Any
    norm_stats: Any
    ema: WeightAverage | None  # train.ema_decay > 0: what the checkpoints hold
    token_drop: TokenDrop | None  # train.token_drop_prob > 0: pruning-robust steps


def run_train(cfg: DictConfig) -> Path:
    """Train as `cfg` (the composed `train` config) says; returns the last checkpoint directory."""
    run = _setup(cfg)
    t = cfg.train
    log = (run.out / "metrics.jsonl").open("a")
    bar = tqdm(total=t.steps, initial=run.step, desc=f"train {cfg.policy.type}", dynamic_ncols=True,
               disable=not t.progress)
    t0, s0 = time.perf_counter(), run.step
    while run.step < t.steps:
        record = _train_step(run)
        if run.probe is not None and run.step % int(t.probe_every) == 0:
            _probe(run, record, bar)
        log.write(json.dumps(record) + "\n")
        extra = {k: v for k, v in record.items() if k not in ("step", "loss", "lr") and not k.startswith("probe")}
        bar.set_postfix(loss=f"{record['loss']:.4f}", **{k: f"{v:.3f}" for k, v in extra.items()})
        bar.update(1)
        if run.step % t.save_every == 0 or run.step == t.steps:
            log.flush()  # a killed run keeps every logged step up to its last checkpoint
            with _averaged(run) as raw:
                run.norm_stats(run.policy)
                run.policy.eval()
                run.last = save_checkpoint(run.out, run.policy, run.optimizer, run.step, run.gens,
                                           t.keep_checkpoints, raw,
                                           {"ema_updates": run.ema.updates} if run.ema else None)
            run.policy.train()
    bar.close()
    log.close()
    if run.step > s0:
        rate = (run.step - s0) / (time.perf_counter() - t0)
        (run.out / "train_speed.json").write_text(json.dumps({"steps": run.step - s0, "steps_per_s": rate}))
    return run.last


def _setup(cfg: DictConfig) -> _Training:
    """Check the config, seed every RNG, load the demos, build (or resume) the policy and its optimizer."""
    t, kind = cfg.train, cfg.policy.type
    policy_class(kind)
    token_drop = validated(TrainSchema, t).token_drop()  # checks train.augment, the types, the drop settings
    if token_drop is not None and kind != "cogact":
        raise ValueError(f"train.token_drop_prob is for CogACT-style policies (the cognition forward); "
                         f"policy.type is {kind!r}")
    if token_drop is not None:  # before the demos load: a bad K fails now, not at the first cut step
        check_drop_layer(token_drop.layer, int(cfg.policy.model.llm.num_layers))
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    gens = {"data": torch.Generator().manual_seed(t.seed), "aug": torch.Generator().manual_seed(t.seed + 1),
            "noise": torch.Generator().manual_seed(t.seed + 2)}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cameras = list(cfg.policy.model.get("cameras", ["agentview"]))
    chunk = int(cfg.policy.model.get("chunk_size", 1)) if kind == "cogact" else 1
    dataset = DemoDataset(list(cfg.data.paths), cameras, chunk_size=chunk)
    resume_from = checkpoint_dirs(out)[-1] if t.resume and checkpoint_dirs(out) else None
    if t.get("init_from") and t.get("init_vlm_from"):
        raise ValueError("train.init_from (every weight) and train.init_vlm_from (the VLM): give one")
    if t.get("init_from") and not resume_from and not (Path(t.init_from) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"train.init_from: no tokenizer.json in {t.init_from}")
    policy = (policy_class(kind).from_pretrained(resume_from) if resume_from
              else make_policy_for_training(cfg, dataset, t.get("init_from")))
    if t.get("init_from") and not resume_from:
        print(f"initialised {init_from(policy, t.init_from)} tensors from {t.init_from}")
    if t.get("init_vlm_from") and not resume_from:
        n = init_vlm_from(policy, t.init_vlm_from)
        print(f"initialised {n} VLM tensors from {t.init_vlm_from}")
    policy.to(cfg.device).train()
    freeze = bool(t.freeze_vlm) and kind == "cogact"
    if freeze:
        for name, p in policy.named_parameters():
            p.requires_grad_(name.startswith("action_model."))
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    ema = WeightAverage(policy, float(t.ema_decay)) if t.get("ema_decay") else None
    step = load_trainer_state(resume_from, optimizer, gens, ema) if resume_from else 0
    # On resume the saved param groups hold `initial_lr`, so the schedule picks up at `step`.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.warmup_steps, t.steps, t.min_lr_ratio), last_epoch=step - 1)
    probe = InputProbe(dataset, int(t.get("probe_size", 32)), t.seed) if t.get("probe_every") else None
    norm_stats = StandardizerStatistics(dataset, int(t.get("standardizer_frames", 512)), t.seed)
    return _Training(cfg, out, dataset, policy, params, freeze, optimizer, scheduler, gens, step, resume_from,
                     probe, norm_stats, ema, token_drop)


def _averaged(run: _Training):
    """The weight average in the policy for a probe or a checkpoint (its raw weights as trainer-state
    tensors to the block); without an average, the policy as it is."""
    return run.ema.applied() if run.ema is not None else nullcontext({})


def _train_step(run: _Training) -> dict:
    """One optimizer step on a random batch; the metrics.jsonl record of it."""
    t, kind = run.cfg.train, run.cfg.policy.type
    idx = torch.randint(0, len(run.dataset), (t.batch_size,), generator=run.gens["data"]).numpy()
    batch = run.dataset.batch(idx)
    inputs = build_inputs(run.policy, batch, t.augment, run.gens["aug"], t.crop_area)
    # the drop draws from the augmentation stream (saved with the trainer state); with the drop off it
    # draws nothing, so runs without it are unchanged
    kept = (run.token_drop.draw(t.batch_size, run.policy.config.num_visual_tokens, run.gens["aug"])
            if run.token_drop is not None else None)
    drop = None if kept is None else (kept, run.token_drop.layer)
    loss, extra = compute_loss(run.policy, kind, inputs, batch, run.freeze, run.gens["noise"], drop)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, t.grad_clip)
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update()
    run.scheduler.step()
    run.step += 1
    if run.token_drop is not None:
        extra["kept_visual"] = run.policy.config.num_visual_tokens if kept is None else kept.shape[1]
    return {"step": run.step, "loss": float(loss.detach()), "lr": run.scheduler.get_last_lr()[0], **extra}


def _probe(run: _Training, record: dict, bar) -> None:
    """The input probe (does the policy use its image and instruction?) into the record and the console:
    of the weights a checkpoint holds (the average, with one)."""
    with _averaged(run):
        run.norm_stats(run.policy)
        record.update(run.probe(run.policy, run.cfg.policy.type))
    image_gap = record["probe_loss_shuffled_images"] - record["probe_loss"]
    bar.write(f"step {run.step}: probe loss {record['probe_loss']:.4f}, with shuffled images "
              f"{record['probe_loss_shuffled_images']:.4f} (gap {image_gap:+.4f}), with shuffled "
              f"instructions {record['probe_loss_shuffled_instructions']:.4f}")


def run(cfg: DictConfig) -> None:
    """The `vla-accel train` task."""
    print(f"last checkpoint: {run_train(cfg)}")


def main() -> None:
    import hydra

    @hydra.main(version_base=None, config_path="pkg://vla_accel.conf", config_name="train")
    def _app(cfg: DictConfig) -> None:
        print(f"last checkpoint: {run_train(cfg)}")

    _app()


if __name__ == "__main__":
    main()
