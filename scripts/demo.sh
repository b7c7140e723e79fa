#!/usr/bin/env bash
# README command 1: install bwtf into ./.venv, then run the full demo on real data.
#
#   bash scripts/demo.sh            # everything goes to ./demo-out (or $BWTF_DEMO_OUT)
#
# 1. writes scikit-learn's 1,797 handwritten digit scans as an ILSVRC2012-layout archive;
# 2. builds the TFDS dataset `imagenet_archive` from it (bwtf-build-data);
# 3. trains small_cnn on a localhost cluster: 1 ps, a chief, 1 worker and an evaluator (bwtf-launch);
# 4. evaluates the newest intact checkpoint on the validation split (bwtf-eval);
# 5. exports a SavedModel into a version folder (bwtf-export) and verifies the checkpoints (bwtf-ckpt verify);
# 6. prints precision@1 and where everything went.
# BWTF_DEMO_SKIP_INSTALL=1 skips step 0 (the install) on a machine that already has .venv.
# BWTF_VENV and BWTF_EXTRAS choose the environment as for install.sh, e.g. TensorFlow 2.21:
#   BWTF_VENV=.venv-tf221 BWTF_EXTRAS=cpu-tf221,demo,test bash scripts/demo.sh
# The console shows bwtf's own lines (at most 60 after the installation); each task's full
# log, TensorFlow's included, is in demo-out/model/logs/<role>.log. BWTF_DEMO_VERBOSE=1
# passes -v 0 to every program, which shows the full logs on the console instead.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "${BWTF_DEMO_OUT:-$repo/demo-out}" && cd "${BWTF_DEMO_OUT:-$repo/demo-out}" && pwd)"
venv="${BWTF_VENV:-$repo/.venv}"
bin="$venv/bin"
started=$SECONDS
# TF's C++ start-up notices (oneDNN, CPU features) once per process are noise here.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"

step() { printf '== demo: %s\n' "$*"; }
verbose=()
[ "${BWTF_DEMO_VERBOSE:-0}" = 1 ] && verbose=(--verbosity=0)

if [ "${BWTF_DEMO_SKIP_INSTALL:-0}" != 1 ]; then
  step "install (scripts/install.sh)"
  bash "$repo/scripts/install.sh"
fi
installed=$SECONDS

# A fresh run every time: stale checkpoints would make training resume instead of start.
rm -rf "$out/archive" "$out/tfds" "$out/model" "$out/export" "$out/eval.json" "$out/job.flags"

# What every program must agree on (model, data, run directory) goes in one flag
# file; the training-only settings follow it on the launcher's command line.
cat > "$out/job.flags" <<FLAGS
--model=small_cnn
--image_size=32
--data_dir=$out/tfds
--dataset=imagenet_archive
--model_dir=$out/model
FLAGS

step "1/5 write the digits archive in the ILSVRC2012 layout"
"$bin/python" -m bwtf.data.sample_archive --out="$out/archive" ${verbose[@]+"${verbose[@]}"}

step "2/5 build the TFDS dataset"
"$bin/bwtf-build-data" --manual_dir="$out/archive" --data_dir="$out/tfds" ${verbose[@]+"${verbose[@]}"}

step "3/5 train on localhost: 1 ps, chief, 1 worker, evaluator"
"$bin/bwtf-launch" --num_ps=1 --num_workers=2 --evaluator -- --flagfile="$out/job.flags" ${verbose[@]+"${verbose[@]}"} \
    --batch_size=32 --train_steps=1500 --save_checkpoints_steps=750 --keep_checkpoints=3 --eval_throttle_secs=5 \
    --log_every_steps=400

step "4/5 evaluate the newest intact checkpoint"
# The model_dir describes itself (run.json): evaluation and export need nothing else.
"$bin/bwtf-eval" --model_dir="$out/model" --split=validation --output_json="$out/eval.json" ${verbose[@]+"${verbose[@]}"} \
    > /dev/null  # the result's one line is logged; the record is in eval.json

step "5/5 export a SavedModel and verify the checkpoints"
saved_model=$("$bin/bwtf-export" --model_dir="$out/model" --export_dir="$out/export" ${verbose[@]+"${verbose[@]}"})
"$bin/bwtf-ckpt" verify "$out/model"

precision=$("$bin/python" -c 'import json, sys; print("%.4f" % json.load(open(sys.argv[1]))["precision_at_1"])' "$out/eval.json")
cat <<SUMMARY
== demo finished in $(( SECONDS - installed )) s after installation ($(( SECONDS - started )) s in all)
precision@1 on the validation split: $precision
  data     archive $out/archive, dataset $out/tfds
  run      $out/model: checkpoints (bwtf-ckpt list), full logs in logs/ (or tensorboard --logdir)
  results  $out/eval.json, SavedModel $saved_model, job flags $out/job.flags
SUMMARY
