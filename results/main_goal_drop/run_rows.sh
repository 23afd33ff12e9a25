#!/usr/bin/env bash
# As run on 2026-12-02 (after `vla-accel calibrate policy=cogact_deep policy.path=$CK env=goal` and the bench,
# both by hand); $CK is now checkpoints/cogact_goal (the same model files).
# After the token-drop fine-tune: evaluate ONLY the pre-chosen final checkpoint (step 3000).
set -uo pipefail
cd /work/main
export MUJOCO_GL=egl
CK=/work/main/runs/cogact_deep_goal_drop/checkpoints/step_0003000
R=/work/main/results/main_goal_drop
V=.venv/bin/vla-accel
mkdir -p $R
RAY="eval.shards=2 eval.launcher=ray +eval.ray.env_vars.OMP_NUM_THREADS=1"
echo "start $(date -u)"
$V eval env=goal policy=cogact_deep policy.path=$CK eval.n_episodes=50 $RAY eval.progress=false hydra.run.dir=$R/none_500 > $R.none_500.log 2>&1
grep -o '"success_rate": [0-9.]*' $R/none_500/eval_info.json | head -1
echo "500 done $(date -u)"
RANK=$R/calibrate/layer_ranking.json
row() { name=$1; shift; $V eval env=goal policy=cogact_deep policy.path=$CK eval.n_episodes=20 $RAY eval.progress=false hydra.run.dir=$R/$name "$@" > $R.$name.log 2>&1; echo "$name $(grep -o '"success_rate": [0-9.]*' $R/$name/eval_info.json | head -1) $(date -u +%H:%M)"; }
row none
row vla_pruner accel=vla_pruner accel.keep_ratio=0.25 accel.prune_layer=2
row fastv accel=fastv accel.keep_ratio=0.25 accel.prune_layer=2
row efficientvla_combo accel=efficientvla_combo accel.skip_layers=[] accel.skip_ranking_file=$RANK accel.skip_num_drop=2
row head_cache5 accel=none accel.head_cache_interval=5
row vla_pruner_0.5 accel=vla_pruner accel.keep_ratio=0.5 accel.prune_layer=2
echo "end $(date -u)"
