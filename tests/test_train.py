"""train.py: a tiny run learns, resuming is exact, checkpoints rotate, several processes agree.

Runs on a few synthetic windows of D = 8 features and 32 steps (anchor layers of 4, 2, 1
positions) so the file stays fast on CPU.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoints
import config
from conftest import TINY, TINY_RUN
import load_data
import release_dataset
import sliding_windows
import train

torch.set_num_threads(2)
LRS = TINY_RUN['learning_rates']   # (1e-3,) * 3


def make_data(num_windows=6, dim=8, seed=0):
    """Windows with one action each; the features carry the class and the action's extent."""
    rng = np.random.default_rng(seed)
    max_boxes = 2
    label = np.zeros((num_windows, max_boxes), np.int64)
    box = np.zeros((num_windows, max_boxes, 2), np.float32)
    valid = np.zeros((num_windows, max_boxes), bool)
    label[:, 0] = rng.integers(1, 21, num_windows)
    start = rng.uniform(0.0, 0.6, num_windows)
    box[:, 0, 0], box[:, 0, 1] = start, start + rng.uniform(0.1, 0.4, num_windows)
    valid[:, 0] = True
    features = rng.normal(0, 0.1, (num_windows, TINY['input_steps'], dim)).astype(np.float32)
    steps = np.arange(TINY['input_steps'])[None, :] / TINY['input_steps']
    inside = (steps >= box[:, :1, 0]) & (steps < box[:, :1, 1])
    features[:, :, 0] += inside
    features[:, :, 1] += (label[:, :1] % 7) / 7.0
    return dict(features=features, gt_label=label, gt_box=box, gt_valid=valid)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def epochs_on_disk(cfg):
    return [e for e, _ in checkpoints.list_checkpoints(config.get_models_dir(cfg))]


def log_lines(cfg):
    with open(config.get_log_path(cfg)) as f:
        return f.read().splitlines()


def assert_same_tensors(a, b, exact=True):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key], exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y, exact)
    elif isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a, b)
        else:
            # Rounding differs with the batch split; Adam turns it into up to a step or so in
            # the odd weight with a near-zero gradient, so allow a few such weights, not more.
            off = (a.float() - b.float()).abs() > 1e-4 + 1e-3 * b.float().abs()
            assert off.float().mean() <= 1e-5, f'{int(off.sum())} of {off.numel()} values differ'
    else:
        assert a == b


@pytest.fixture(scope='module')
def data():
    return make_data()


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, data, make_config):
    """An uninterrupted 3-epoch run that keeps every checkpoint."""
    cfg = make_config(TINY_RUN, root=tmp_path_factory.mktemp('full'), keep_checkpoints=0)
    result = train.train(cfg, data=data, progress=False)
    return cfg, result


@pytest.fixture(scope='module')
def resumed_run(tmp_path_factory, data, make_config):
    """The same run stopped after 1 epoch, then resumed by the same call with all 3 learning rates."""
    root = tmp_path_factory.mktemp('resumed')
    first = train.train(make_config(TINY_RUN, root=root, learning_rates=LRS[:1]), data=data, progress=False)
    cfg = make_config(TINY_RUN, root=root)
    return cfg, first, train.train(cfg, data=data, progress=False)


def test_loss_falls_and_log_has_one_line_per_epoch(full_run):
    cfg, result = full_run
    lines = log_lines(cfg)
    assert [line.split()[0] for line in lines] == ['Epoch-0', 'Epoch-1', 'Epoch-2']
    totals = [float(line.split('Total - ')[1].split(',')[0]) for line in lines]
    assert totals[-1] < 0.8 * totals[0]
    assert result['losses']['total'] == pytest.approx(totals[-1], abs=1e-5)
    assert result['model_path'].endswith('model-ep-2.pt') and result['epoch'] == 2
    assert epochs_on_disk(cfg) == [0, 1, 2]  # keep_checkpoints=0 keeps all


def test_checkpoint_contents_and_load_model(full_run, data):
    cfg, result = full_run
    ckpt = load(result['model_path'])
    assert ckpt['epoch'] == 2 and ckpt['method'] == 'main_stream' and ckpt['feature_dim'] == 8
    assert config.config_from_dict(ckpt['config']).to_dict() == cfg.to_dict()
    assert set(ckpt['rng']) == {'torch', 'cuda', 'numpy', 'loss_generator'}
    assert ckpt['optimizer']['param_groups'][0]['lr'] == LRS[2]
    with open(os.path.join(config.get_models_dir(cfg), 'config.json')) as f:
        assert config.config_from_dict(json.load(f)).to_dict() == cfg.to_dict()
    model, _ = checkpoints.load_model(result['model_path'], cfg, feature_dim=8)
    assert_same_tensors(model.state_dict(), ckpt['model'])


def test_without_save_checkpoints_the_same_training_writes_no_checkpoint(full_run, data, tmp_path, make_config):
    cfg_on, _ = full_run
    cfg = make_config(TINY_RUN, root=tmp_path, keep_checkpoints=0, save_checkpoints=False)
    result = train.train(cfg, data=data, progress=False)
    assert result['model_path'] is None and result['epoch'] == 2
    assert sorted(os.listdir(config.get_models_dir(cfg))) == ['.lock', 'config.json']
    assert epochs_on_disk(cfg_on) == [0, 1, 2]   # on (the default): one per epoch, as before
    assert log_lines(cfg) == log_lines(cfg_on)   # the same training, loss for loss


def test_resume_gives_bitwise_identical_weights(full_run, resumed_run):
    _, full = full_run
    cfg, first, resumed = resumed_run
    assert first['epoch'] == 0 and resumed['epoch'] == 2
    a, b = load(full['model_path']), load(resumed['model_path'])
    assert_same_tensors(a['model'], b['model'])
    assert_same_tensors(a['optimizer'], b['optimizer'])
    assert_same_tensors(a['rng'], b['rng'])
    assert [line.split()[0] for line in log_lines(cfg)] == ['Epoch-0', 'Epoch-1', 'Epoch-2']
    assert epochs_on_disk(cfg) == [1, 2]  # the newest two are kept


def test_finished_run_says_complete(resumed_run, data, capsys):
    cfg, _, resumed = resumed_run
    before = os.path.getmtime(resumed['model_path'])
    again = train.train(cfg, data=data, progress=False)
    assert 'complete' in capsys.readouterr().out
    assert again['model_path'] == resumed['model_path'] and again['epoch'] == 2
    assert os.path.getmtime(resumed['model_path']) == before and len(log_lines(cfg)) == 3


def test_feature_dimension_that_does_not_fit_the_checkpoint(resumed_run):
    cfg, _, _ = resumed_run
    with pytest.raises(ValueError, match='dimension 8.*dimension 6.*--fresh'):
        train.train(cfg, data=make_data(dim=6), progress=False)


def test_empty_training_set(tmp_path, make_config):
    empty = {key: value[:0] for key, value in make_data().items()}
    with pytest.raises(ValueError, match='training set is empty'):
        train.train(make_config(TINY_RUN, root=tmp_path), data=empty, progress=False)


def test_cli_fresh_restarts(tmp_path, monkeypatch, capsys, make_config):
    monkeypatch.setattr(load_data, 'load_train_data', lambda cfg: make_data(num_windows=3))
    cfg = make_config(TINY_RUN, root=tmp_path, mode='spatial', pretrain='tiny', learning_rates=(1e-3,))
    argv = ['train.py', '--mode', 'spatial', '--pretrain', 'tiny', '--method', 'main_stream', '--device=cpu',
            '--batch_size=3', '--learning_rates=1e-3', '--input_steps=32', '--window_size=128',
            '--num_anchors=4,2,1', f'--models_dir={tmp_path / "models"}', f'--logs_dir={tmp_path / "logs"}']
    monkeypatch.setattr(sys, 'argv', argv)
    train.main()
    assert config.get_log_path(cfg).endswith(os.path.join('logs', 'spatial_tiny_main_stream.log'))
    first = load(os.path.join(config.get_models_dir(cfg), 'model-ep-0.pt'))
    assert first['config'] == cfg.to_dict()
    train.main()
    assert 'complete' in capsys.readouterr().out
    with open(config.get_log_path(cfg), 'a') as f:
        f.write('Epoch-7 Train Loss: a line of an older run\n')
    monkeypatch.setattr(sys, 'argv', argv + ['--fresh'])
    train.main()
    assert epochs_on_disk(cfg) == [0] and len(log_lines(cfg)) == 1
    assert log_lines(cfg)[0].startswith('Epoch-0 Train Loss: Total - ')
    assert_same_tensors(first['model'], load(os.path.join(config.get_models_dir(cfg), 'model-ep-0.pt'))['model'])


def test_decouple_ssad_trains(tmp_path, make_config):
    cfg = make_config(TINY_RUN, root=tmp_path, method='decouple_ssad', learning_rates=(1e-3,), batch_size=2)
    result = train.train(cfg, data=make_data(num_windows=2), progress=False)
    assert all(np.isfinite(v) for v in result['losses'].values())
    model, ckpt = checkpoints.load_model(result['model_path'], cfg, feature_dim=8)
    assert ckpt['method'] == 'decouple_ssad' and len(log_lines(cfg)) == 1


def write_dataset(root, data, pretrain):
    """The arrays of make_data as files: window list, gt.npz and one feature file per window."""
    num_windows = len(data['features'])
    starts, videos = np.arange(num_windows) * 128, np.array(['video_validation_0000001'] * num_windows)
    os.makedirs(root / 'thumos14' / 'val')
    sliding_windows.write_window_info(str(root / 'thumos14' / 'val' / 'window_info.log'), starts, videos)
    valid = data['gt_valid']
    box = np.concatenate([data['gt_box'][valid], np.ones((valid.sum(), 1), np.float32)], 1)
    release_dataset.save_gt(str(root / 'thumos14' / 'val' / 'gt.npz'), dict(
        start=starts, video=videos, offsets=np.concatenate([[0], np.cumsum(valid.sum(1))]),
        label=data['gt_label'][valid], box=box))
    folder = root / 'feature' / 'val' / f'temporalDataX{pretrain}'
    os.makedirs(folder)
    for i, window in enumerate(data['features']):
        np.save(folder / f'{i}.npy', window)
    return [f'--data_dir={root / "thumos14"}', f'--feature_path={root / "feature"}']


def test_torchrun_two_processes_give_the_single_process_weights(tmp_path, full_run, data, make_config):
    """torchrun on CPU (gloo): each process runs half of every batch; the loss is the whole batch's."""
    full_cfg, _ = full_run
    paths = write_dataset(tmp_path, data, 'tiny')
    cfg = make_config(TINY_RUN, root=tmp_path, pretrain='tiny', learning_rates=LRS[:1])
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               os.path.abspath(train.__file__), '--mode', 'temporal', '--pretrain', 'tiny', '--method', 'main_stream',
               '--device=cpu', '--batch_size=3', '--learning_rates=1e-3', '--input_steps=32', '--window_size=128',
               '--num_anchors=4,2,1', f'--models_dir={cfg.models_dir}', f'--logs_dir={cfg.logs_dir}'] + paths
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = load(os.path.join(config.get_models_dir(cfg), 'model-ep-0.pt'))
    one = load(os.path.join(config.get_models_dir(full_cfg), 'model-ep-0.pt'))
    assert_same_tensors(one['model'], two['model'], exact=False)
    assert len(log_lines(cfg)) == 1


def test_checkpoint_of_a_cuda_graph_run_resumes_on_a_cpu(tmp_path, data, make_config):
    """A CUDA-graph run saves a capturable optimizer with a tensor learning rate; resuming it
    elsewhere (here on a CPU, without a graph) must take its state and go on eagerly."""
    first = train.train(make_config(TINY_RUN, root=tmp_path, learning_rates=LRS[:1]), data=data, progress=False)
    ckpt = load(first['model_path'])
    for group in ckpt['optimizer']['param_groups']:
        group['lr'], group['capturable'] = torch.tensor(group['lr']), True
    torch.save(ckpt, first['model_path'])
    resumed = train.train(make_config(TINY_RUN, root=tmp_path, learning_rates=LRS[:2]), data=data, progress=False)
    assert resumed['epoch'] == 1
    saved = load(resumed['model_path'])['optimizer']['param_groups'][0]
    assert saved['lr'] == LRS[1] and saved['capturable'] is False


def test_a_failed_checkpoint_write_stops_training(tmp_path, data, monkeypatch, make_config):
    """Checkpoints are written by a background thread; its error must not be lost."""
    def disk_full(path, state, keep=0):
        raise OSError(f'{path}: no space left on device')
    monkeypatch.setattr(checkpoints, 'write_checkpoint', disk_full)
    with pytest.raises(OSError, match='no space left'):
        train.train(make_config(TINY_RUN, root=tmp_path, learning_rates=LRS[:2]), data=data, progress=False)
