#!/usr/bin/env bash
# Train the temporal and the spatial stream, test both, fuse them and evaluate.
#
#   bash run.sh [stage] [pretrain] [method] [--key=value ...]
#
#   stage     train | test | fuse | train_test_fuse   (default train_test_fuse)
#   pretrain  UCF101 | KnetV3 | any feature set name  (default UCF101)
#   method    decouple_ssad | main_stream             (default decouple_ssad)
#   --key=value  config overrides passed to every script (see config.py)
#
# EARLY_FUSION=1 also trains and tests mode concat (both streams concatenated into one network,
# docs/method.md §15) beside the two streams and their late fusion; the summary at the end
# compares late fusion, early fusion, RGB only and flow only (kit and ActivityNet mAP). On the
# field's I3D files (the annotation JSON and one <video>.npy per video):
#
#   EARLY_FUSION=1 bash run.sh train_test_fuse I3D decouple_ssad --data_source=json \
#       --annotation_json=data/thumos/annotations/thumos14.json --feature_dir=data/thumos/i3d_features
#
# With two or more GPUs the two streams run in parallel, one GPU each; with one
# GPU or none they run one after the other. SHARE_GPU=1 bash run.sh ... runs them
# in parallel on one GPU (it needs memory for both; bf16 Decouple-SSAD takes ~7 GiB). Outputs go to models/, results/ and
# logs/ in the current folder (or --models_dir=, --results_dir=, --logs_dir=):
# each stream's console output to logs/<mode>_<pretrain>_<method>.out, its
# per-epoch loss lines to logs/<mode>_<pretrain>_<method>.log.
#
# One after the other, every stage runs in one process (torch imported once, one CUDA context,
# one cuDNN autotune); the outputs are the same bytes as with one process per script, which
# ONE_PROCESS=0 bash run.sh ... keeps. It ends with the elapsed time and the time of each stage.
#
# This is the launcher: pipeline.py runs the stages (python pipeline.py takes the same
# arguments and switches); PYTHON=/path/to/python picks the interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python}" -u "$here/pipeline.py" "$@"
