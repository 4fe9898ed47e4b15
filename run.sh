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
#   EARLY_FUSION=1 bash run.sh train_test_fuse I3D decouple_ssad --data_source=i3d \
#       --i3d_annotation=data/thumos/annotations/thumos14.json --i3d_feature_dir=data/thumos/i3d_features
#
# With two or more GPUs the two streams run in parallel, one GPU each; with one
# GPU or none they run one after the other. SHARE_GPU=1 bash run.sh ... runs them
# in parallel on one GPU (it needs memory for both; bf16 Decouple-SSAD takes ~7 GiB). Outputs go to models/, results/ and
# logs/ in the current folder (or --models_dir=, --results_dir=, --logs_dir=):
# each stream's console output to logs/<mode>_<pretrain>_<method>.out, its
# per-epoch loss lines to logs/<mode>_<pretrain>_<method>.log.
#
# One after the other, every stage runs in one process (pipeline.py: torch imported once, one
# CUDA context, one cuDNN autotune; it prints the time of each stage); the outputs are the same
# bytes as with one process per script, which ONE_PROCESS=0 bash run.sh ... keeps.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)

stage=${1:-train_test_fuse}
pretrain=${2:-UCF101}
method=${3:-decouple_ssad}
overrides=("${@:4}")
PYTHON=${PYTHON:-python}
modes=(temporal spatial)
case ${EARLY_FUSION:-0} in 0) ;; 1) modes+=(concat) ;; *)
    echo "run.sh: EARLY_FUSION must be 0 or 1, got '${EARLY_FUSION}'" >&2; exit 2 ;;
esac

case ${ONE_PROCESS:-1} in 0|1) ;; *)
    echo "run.sh: ONE_PROCESS must be 0 or 1, got '${ONE_PROCESS}'" >&2; exit 2 ;;
esac

case $stage in train|test|fuse|train_test_fuse) ;; *)
    echo "run.sh: unknown stage '$stage' (train | test | fuse | train_test_fuse)" >&2; exit 2 ;;
esac
case $method in decouple_ssad|main_stream) ;; *)
    echo "run.sh: unknown method '$method' (decouple_ssad | main_stream)" >&2; exit 2 ;;
esac

results=results; logs=logs; models=models
for arg in "${overrides[@]}"; do
    case $arg in
        --results_dir=*) results=${arg#*=} ;;
        --logs_dir=*) logs=${arg#*=} ;;
        --models_dir=*) models=${arg#*=} ;;
    esac
done
mkdir -p "$logs" "$results" "$models"
SECONDS=0
echo "run.sh: stage=$stage pretrain=$pretrain method=$method modes=${modes[*]} ${overrides[*]:-}"

# One stream: train and/or test, as the stage asks.
run_stream() {
    local mode=$1
    local args=(--mode "$mode" --pretrain "$pretrain" --method "$method" "${overrides[@]}")
    if [[ $stage == train || $stage == train_test_fuse ]]; then
        $PYTHON -u "$here/train.py" "${args[@]}" || return 1
    fi
    if [[ $stage == test || $stage == train_test_fuse ]]; then
        $PYTHON -u "$here/test.py" "${args[@]}" || return 1
    fi
}

gpus=0; parallel=0
if [[ $stage != fuse ]]; then
    gpus=$($PYTHON -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    if (( gpus >= 2 )) || { (( gpus == 1 )) && [[ ${SHARE_GPU:-0} == 1 ]]; }; then parallel=1; fi
fi

if [[ ${ONE_PROCESS:-1} == 1 && $parallel == 0 ]]; then
    [[ $stage == fuse ]] && what="fusion and evaluation" || what="${gpus} GPU(s): ${modes[*]} one after the other"
    echo "run.sh: $what, in one process (pipeline.py; ONE_PROCESS=0: one process per script)"
    EARLY_FUSION=${EARLY_FUSION:-0} $PYTHON -u "$here/pipeline.py" "$stage" "$pretrain" "$method" "${overrides[@]}" \
        || exit $?
    echo "run.sh: $((SECONDS / 60)) minutes and $((SECONDS % 60)) seconds elapsed."
    exit 0
fi

if [[ $stage != fuse ]]; then
    declare -A status
    if (( parallel )); then
        second=$(( gpus >= 2 ? 1 : 0 ))
        echo "run.sh: $gpus GPU(s): temporal on GPU 0 and spatial on GPU $second, in parallel"
        CUDA_VISIBLE_DEVICES=0 run_stream temporal > "$logs/temporal_${pretrain}_${method}.out" 2>&1 &
        pid_temporal=$!
        CUDA_VISIBLE_DEVICES=$second run_stream spatial > "$logs/spatial_${pretrain}_${method}.out" 2>&1 &
        pid_spatial=$!
        wait $pid_temporal; status[temporal]=$?
        wait $pid_spatial; status[spatial]=$?
        if [[ ${modes[*]} == *concat* ]] && (( status[temporal] == 0 && status[spatial] == 0 )); then
            echo "run.sh: early fusion (mode concat) on GPU 0"
            CUDA_VISIBLE_DEVICES=0 run_stream concat > "$logs/concat_${pretrain}_${method}.out" 2>&1
            status[concat]=$?
        fi
    else
        echo "run.sh: ${gpus} GPU(s): ${modes[*]} one after the other"
        for mode in "${modes[@]}"; do
            echo "run.sh: $mode stream (console output in $logs/${mode}_${pretrain}_${method}.out)"
            run_stream $mode 2>&1 | tee "$logs/${mode}_${pretrain}_${method}.out"
            status[$mode]=${PIPESTATUS[0]}
            (( status[$mode] == 0 )) || break
        done
    fi
    for mode in "${modes[@]}"; do
        if [[ ${status[$mode]:-1} != 0 ]]; then
            echo "run.sh: the $mode stream failed (exit ${status[$mode]:-not run}); see $logs/${mode}_${pretrain}_${method}.out. Nothing was fused." >&2
            tail -n 15 "$logs/${mode}_${pretrain}_${method}.out" >&2 2>/dev/null
            exit 1
        fi
    done
fi

if [[ $stage == fuse || $stage == train_test_fuse ]]; then
    echo "run.sh: fusing the two streams"
    $PYTHON -u "$here/fuse.py" --pretrain "$pretrain" --method "$method" "${overrides[@]}" || exit 1
    fused="$results/result_fuse_${pretrain}_${method}.txt"
    for mode in temporal spatial; do
        result="$results/result_${mode}_${pretrain}_${method}.txt"
        if [[ -f $result ]]; then
            echo "run.sh: $mode stream alone:"
            $PYTHON "$here/evaluate.py" "$result" --summary "${overrides[@]}" || exit 1
        fi
    done
    concat="$results/result_concat_${pretrain}_${method}.txt"
    if [[ ${modes[*]} == *concat* && -f $concat ]]; then
        echo "run.sh: early fusion (mode concat), $concat:"
        $PYTHON "$here/evaluate.py" "$concat" --summary "${overrides[@]}" || exit 1
    fi
    echo "run.sh: two-stream fusion, $fused:"
    $PYTHON "$here/evaluate.py" "$fused" --json "$results/eval_fuse_${pretrain}_${method}.json" "${overrides[@]}" || exit 1
    report="$results/result_fuse_${pretrain}_${method}_diagnosis.html"
    $PYTHON "$here/fig/diagnose.py" "$fused" --out "$results" "${overrides[@]}" || exit 1
    echo "run.sh: error diagnosis of the fusion (open it in a browser): $report"
    # The summary: every variant that has a result, under the kit metric and the ActivityNet one.
    files=("$fused"); labels=("late fusion")
    [[ ${modes[*]} == *concat* && -f $concat ]] && { files+=("$concat"); labels+=("early fusion (concat)"); }
    for pair in "spatial:RGB only (spatial)" "temporal:flow only (temporal)"; do
        result="$results/result_${pair%%:*}_${pretrain}_${method}.txt"
        [[ -f $result ]] && { files+=("$result"); labels+=("${pair#*:}"); }
    done
    echo "run.sh: summary, mAP (%) at tIoU 0.5 and averaged over 0.3:0.1:0.7:"
    $PYTHON "$here/evaluate.py" "${files[@]}" --labels "${labels[@]}" --metric both --compare \
        "${overrides[@]}" || exit 1
fi

echo "run.sh: $((SECONDS / 60)) minutes and $((SECONDS % 60)) seconds elapsed."
