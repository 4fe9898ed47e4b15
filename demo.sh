#!/usr/bin/env bash
# The whole pipeline on a small synthetic THUMOS14-format dataset, on any machine:
# install, write the dataset, train both streams, test, fuse, evaluate, plot.
#
#   bash demo.sh [--key=value ...]     # extra config overrides go to every stage
#
# About 2 minutes on 2 CPU cores. Outputs: models/, results/, logs/ (runs named
# <mode>_synthetic_decouple_ssad), fig/demo_ap.png, fig/demo_timeline.png and the
# error diagnosis of the fused result, results/result_fuse_synthetic_decouple_ssad_diagnosis.html.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

$PYTHON -m pip install -q -r requirements.txt

DATA=data/synthetic
$PYTHON data/make_synthetic.py --out $DATA

# The demo config: the synthetic data, a narrower network (128 / 256 filters
# instead of 512 / 1024), batches of 16 and 20 epochs at a larger learning rate,
# so that it trains in about a minute per stream on a CPU. Everything else is
# as released. Later overrides win.
lrs=$(printf '5e-4,%.0s' {1..18})5e-5,5e-5
demo=(--data_dir=$DATA/thumos14 --feature_path=$DATA/feature
      --eval_gt_dir=$DATA/thumos14/eval_annotation --fps_file=$DATA/thumos14/video_fps.csv
      --base_width=128 --anchor_width=256 --batch_size=16 --learning_rates=$lrs)
rm -rf models/temporal_synthetic_decouple_ssad models/spatial_synthetic_decouple_ssad  # train afresh
bash run.sh train_test_fuse synthetic decouple_ssad "${demo[@]}" "$@"

fused=results/result_fuse_synthetic_decouple_ssad.txt
$PYTHON fig/plot_eval.py $fused results/result_temporal_synthetic_decouple_ssad.txt \
    results/result_spatial_synthetic_decouple_ssad.txt --gt $DATA/thumos14/eval_annotation \
    --out fig/demo_ap.png
videos=$(cut -f1 $fused | sort -u | head -n 3)
$PYTHON fig/visualize.py $fused --gt $DATA/thumos14/eval_annotation --videos $videos \
    --out fig/demo_timeline.png
echo "demo: per-class AP plot in fig/demo_ap.png, detection timeline in fig/demo_timeline.png"
echo "demo: error diagnosis (run.sh wrote it; open it in a browser): $(pwd)/results/result_fuse_synthetic_decouple_ssad_diagnosis.html"
