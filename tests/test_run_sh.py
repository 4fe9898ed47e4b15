"""run.sh end to end on a small synthetic dataset: both streams, test, fuse, evaluate (in one process, as
run.sh runs them without two GPUs; tests/test_pipeline.py compares that with one process per script)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic')
    subprocess.run([sys.executable, str(REPO / 'data' / 'make_synthetic.py'), '--out', str(out), '--seed', '3',
                    '--train_windows', '96', '--test_windows', '48', '--dim', '16'],
                   check=True, capture_output=True)
    return out


def overrides(data):
    # A narrow network and a short schedule: seconds on a CPU, yet enough to learn the synthetic classes.
    return [f'--data_dir={data}/thumos14', f'--feature_path={data}/feature',
            f'--eval_gt_dir={data}/thumos14/eval_annotation', '--base_width=32', '--anchor_width=64',
            '--batch_size=16', '--learning_rates=' + ','.join(['1e-3'] * 14 + ['1e-4'] * 2), '--device=cpu']


def run_sh(cwd, *args, env=None):
    env = {**os.environ, 'PYTHON': sys.executable, 'CUDA_VISIBLE_DEVICES': '', **(env or {})}
    return subprocess.run(['bash', str(REPO / 'run.sh'), *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_train_test_fuse_evaluate(synthetic, tmp_path):
    proc = run_sh(tmp_path, 'train_test_fuse', 'synthetic', 'decouple_ssad', *overrides(synthetic))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ('predict_temporal_synthetic_decouple_ssad.csv', 'predict_spatial_synthetic_decouple_ssad.csv',
                 'result_temporal_synthetic_decouple_ssad.txt', 'result_spatial_synthetic_decouple_ssad.txt',
                 'result_fuse_synthetic_decouple_ssad.txt'):
        assert (tmp_path / 'results' / name).stat().st_size > 0, name
    log = (tmp_path / 'logs' / 'temporal_synthetic_decouple_ssad.log').read_text().splitlines()
    assert len(log) == 16 and log[0].startswith('Epoch-0 Train Loss: Total - ')
    assert 'two-stream fusion' in proc.stdout and 'mAP avg 0.3:0.1:0.7' in proc.stdout
    assert 'seconds elapsed' in proc.stdout
    fused = json.loads((tmp_path / 'results' / 'eval_fuse_synthetic_decouple_ssad.json').read_text())
    # Chance is near 0 (20 classes, tIoU 0.5); the trained streams find most instances.
    assert fused['map'][fused['thresholds'].index(0.5)] > 0.2


@pytest.fixture(scope='module')
def synthetic_i3d(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic_i3d')
    subprocess.run([sys.executable, str(REPO / 'data' / 'make_synthetic.py'), '--out', str(out), '--seed', '3',
                    '--train_windows', '96', '--test_windows', '48', '--dim', '16', '--layout', 'i3d'],
                   check=True, capture_output=True)
    return out


def test_early_and_late_fusion_from_the_json_and_features_alone(synthetic_i3d, tmp_path):
    """EARLY_FUSION=1 on the field's layout: three networks (flow, RGB, both concatenated), late
    fusion, and a summary of the four variants under both metrics; the JSON is the fps table and
    the ground truth."""
    i3d = ['--data_source=json', f'--annotation_json={synthetic_i3d}/annotations/thumos14.json',
           f'--feature_dir={synthetic_i3d}/i3d_features', '--spatial_channels=0,16',
           '--temporal_channels=16,32']
    proc = run_sh(tmp_path, 'train_test_fuse', 'I3D', 'decouple_ssad', *i3d, *overrides(synthetic_i3d)[3:],
                  env={'EARLY_FUSION': '1'})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for mode in ('temporal', 'spatial', 'concat'):
        assert (tmp_path / 'results' / f'result_{mode}_I3D_decouple_ssad.txt').stat().st_size > 0, mode
    summary = proc.stdout[proc.stdout.index('summary, mAP (%)'):]
    for label in ('late fusion', 'early fusion (concat)', 'RGB only (spatial)', 'flow only (temporal)',
                  'kit avg 0.3:0.7', 'anet avg 0.3:0.7', 'annotation JSON'):
        assert label in summary, summary
    fused = json.loads((tmp_path / 'results' / 'eval_fuse_I3D_decouple_ssad.json').read_text())
    assert fused['map'][fused['thresholds'].index(0.5)] > 0.2


def test_early_fusion_switch_is_checked(tmp_path):
    proc = run_sh(tmp_path, 'train', env={'EARLY_FUSION': 'yes'})
    assert proc.returncode == 2 and 'EARLY_FUSION must be 0 or 1' in proc.stderr


@pytest.mark.parametrize('one_process', ['0', '1'])
def test_a_failing_stream_stops_before_fusing(synthetic, tmp_path, one_process):
    args = overrides(synthetic)
    args[1] = f'--feature_path={tmp_path}/no_such_features'
    proc = run_sh(tmp_path, 'train_test_fuse', 'synthetic', 'main_stream', *args, env={'ONE_PROCESS': one_process})
    assert proc.returncode == 1
    assert 'temporal stream failed' in proc.stderr and 'Nothing was fused' in proc.stderr
    assert not (tmp_path / 'results' / 'result_fuse_synthetic_main_stream.txt').exists()
    log = (tmp_path / 'logs' / 'temporal_synthetic_main_stream.out').read_text().splitlines()
    assert log[-1].startswith('error: ') and 'no_such_features' in log[-1]
    if one_process == '1':  # the stream's output went by on stdout; the error is one line
        assert len(proc.stderr.strip().splitlines()) == 1 and 'no_such_features' in proc.stderr


def test_unknown_stage_is_refused(tmp_path):
    proc = run_sh(tmp_path, 'deploy')
    assert proc.returncode == 2 and "unknown stage 'deploy'" in proc.stderr
