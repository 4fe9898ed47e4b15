"""The synthetic THUMOS14-format dataset: layout, consistency, reproducibility, signal."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import build_config
import feature_files
import load_data
import release_dataset
import sliding_windows
import thumos14
from data.make_synthetic import make_synthetic
from thumos14 import CLASS_NAMES, CLASS_REAL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(dim=16)   # demo window counts (200 / 150), narrow features


def cfg_for(root, **kw):
    return build_config(data_dir=str(root / 'thumos14'), feature_path=str(root / 'feature'),
                        eval_gt_dir=str(root / 'thumos14/eval_annotation'), pretrain='synthetic', **kw)


def digest(root):
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode() + open(path, 'rb').read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def small(tmp_path_factory, make_config):
    root = tmp_path_factory.mktemp('synthetic')
    info = make_synthetic(str(root), make_config(), seed=3, **SMALL)
    return root, info


def test_layout_and_counts(small):
    root, info = small
    assert info['train_windows'] == 200 and info['test_windows'] == 150
    d = root / 'thumos14'
    for split in ('val', 'test'):
        assert (d / split / f'thumos14_{split}_annotation.csv').is_file()
        assert (d / split / 'window_info.log').is_file()
    assert (d / 'val/gt.npz').is_file() and not (d / 'test/gt.npz').exists()
    for split, n in (('val', 200), ('test', 150)):
        for mode in ('temporal', 'spatial'):
            folder = root / 'feature' / split / f'{mode}DataXsynthetic'
            assert sorted(os.listdir(folder), key=lambda f: int(f[:-4])) == [f'{i}.npy' for i in range(n)]
            a = np.load(folder / '0.npy')
            assert a.shape == (128, 16) and a.dtype == np.float64        # as released
    gt_files = sorted(os.listdir(d / 'eval_annotation'))
    assert gt_files == sorted([f'{c}_test.txt' for c in CLASS_NAMES[1:]] + ['Ambiguous_test.txt', 'detclasslist.txt'])
    assert (d / 'eval_annotation/detclasslist.txt').read_text().splitlines() == \
        [f'{i} {n}' for i, n in zip(CLASS_REAL[1:], CLASS_NAMES[1:])]
    assert not [n for n in os.listdir(root) if n.startswith('.')]   # no staging folder left


def test_annotations_windows_and_eval_gt_agree(small):
    root, _ = small
    cfg = cfg_for(root)
    d = root / 'thumos14'
    for split in ('val', 'test'):
        anno = release_dataset.read_annotation(d / split / f'thumos14_{split}_annotation.csv')   # valid
        starts, videos = sliding_windows.make_windows(anno, split, cfg)
        assert np.array_equal(starts, sliding_windows.read_window_info(d / split / 'window_info.log')[0])
        dur = anno['endFrame'] - anno['startFrame']
        assert dur.min() < 30 and dur.max() > 200                         # a few frames to several hundred
        assert anno.groupby('video').size().max() >= 3                     # several instances per video
        # one short video: no training window / a single test window at 0
        short = anno.groupby('video')['frame_num'].first().idxmin()
        assert anno.groupby('video')['frame_num'].first().min() < 521
        assert (videos == short).sum() == (0 if split == 'val' else 1)
    test = release_dataset.read_annotation(d / 'test/thumos14_test_annotation.csv')
    assert set(test['type_idx']) == set(CLASS_REAL[1:])                    # every class is evaluated
    fps = thumos14.video_fps(str(d / 'video_fps.csv'))
    assert fps('video_test_0000950') == 25.0 and 'video_test_0000950' in set(test['video'])
    assert pd.read_csv(d / 'video_fps.csv')['fps'].value_counts().to_dict() == {
        30.0: test['video'].nunique() - 1 + pd.read_csv(d / 'val/thumos14_val_annotation.csv')['video'].nunique(), 25.0: 1}
    # eval ground truth = the test CSV in seconds; CliffDiving is also Diving
    for cid, name in zip(CLASS_REAL[1:], CLASS_NAMES[1:]):
        rows = pd.read_csv(d / f'eval_annotation/{name}_test.txt', sep=r'\s+', header=None, names=['v', 's', 'e'])
        want = test[test['type_idx'] == cid].sort_values(['video', 'startFrame'])
        assert rows['v'].tolist() == want['video'].tolist()
        np.testing.assert_allclose(rows['s'].to_numpy(float), (want['startFrame'] / want['video'].map(fps)).to_numpy(float),
                                   atol=0.051)
    cliff = test[test['type_idx'] == 22][['video', 'startFrame']]
    diving = test[test['type_idx'] == 26][['video', 'startFrame']]
    assert len(cliff) and len(cliff.merge(diving)) == len(cliff)
    amb = (d / 'eval_annotation/Ambiguous_test.txt').read_text().splitlines()
    assert 1 <= len(amb) and all(len(line.split()) == 3 for line in amb)


def test_loaders_read_it(small):
    root, _ = small
    for mode in ('temporal', 'spatial'):
        train = load_data.load_train_data(cfg_for(root, mode=mode))
        assert train['features'].shape == (200, 128, 16) and train['features'].dtype == np.float32
        assert train['gt_valid'].any(1).all()                               # every training window has a box
        test = load_data.load_test_data(cfg_for(root, mode=mode))
        assert test['features'].shape == (150, 128, 16)
    small_cfg = cfg_for(root, small_num_data_for_test=True, batch_size=8)
    assert load_data.load_train_data(small_cfg)['features'].shape[0] == 8
    assert load_data.load_test_data(small_cfg)['features'].shape[0] == 8


def test_reproducible_by_seed_and_layouts_agree(small, tmp_path, make_config):
    root, _ = small
    make_synthetic(str(tmp_path / 'again'), make_config(), seed=3, **SMALL)
    assert digest(root) == digest(tmp_path / 'again')
    make_synthetic(str(tmp_path / 'other'), make_config(), seed=4, **SMALL)
    assert digest(root / 'thumos14') != digest(tmp_path / 'other/thumos14')
    # the same seed in the packed and per-video layouts gives the same window features
    cfg = cfg_for(root)
    ref = load_data.load_test_data(cfg)['features']
    for layout in ('packed', 'video'):
        out = tmp_path / layout
        make_synthetic(str(out), make_config(), seed=3, layout=layout, dtype='float32', **SMALL)
        folder = out / 'feature/test/temporalDataXsynthetic'
        assert feature_files.feature_layout(str(folder)) == layout
        np.testing.assert_allclose(load_data.load_test_data(cfg_for(out))['features'], ref, rtol=1e-6)
    # rewriting a folder replaces the dataset
    make_synthetic(str(tmp_path / 'again'), make_config(), seed=4, **SMALL)
    assert digest(tmp_path / 'again/thumos14') == digest(tmp_path / 'other/thumos14')


def instance_means(root, split, mode):
    """Mean feature over each instance's steps (whole instances inside a window) and its class."""
    cfg = cfg_for(root, mode=mode)
    starts, videos = sliding_windows.read_window_info(root / f'thumos14/{split}/window_info.log')
    feats = release_dataset.load_features(cfg, split, starts, videos)
    gt = sliding_windows.make_gt(release_dataset.read_annotation(
        root / f'thumos14/{split}/thumos14_{split}_annotation.csv'), starts, videos,
        build_config(overlap_ratio_threshold=0.999))
    win = np.repeat(np.arange(len(starts)), np.diff(gt['offsets']))
    steps = np.arange(128)
    a, b = (gt['box'][:, 0] * 128).astype(int), np.ceil(gt['box'][:, 1] * 128).astype(int)
    mask = (steps >= a[:, None]) & (steps < b[:, None])
    x = (feats[win] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return x, gt['label']


def test_features_carry_class_signal_and_streams_differ(small):
    root, _ = small
    acc = {}
    for mode in ('temporal', 'spatial'):
        x, y = instance_means(root, 'val', mode)
        xt, yt = instance_means(root, 'test', mode)
        classes = np.unique(y)
        centroid = np.stack([x[y == c].mean(0) for c in classes])
        dist = ((xt[:, None] - centroid[None]) ** 2).sum(-1)
        known = np.isin(yt, classes)
        acc[mode] = (classes[dist.argmin(1)] == yt)[known].mean()
    # learnable from a few examples, yet not perfect in both streams
    assert 0.5 < acc['temporal'] and 0.5 < acc['spatial'] and min(acc.values()) < 1, acc
    t = np.load(root / 'feature/val/temporalDataXsynthetic/0.npy')
    s = np.load(root / 'feature/val/spatialDataXsynthetic/0.npy')
    assert abs(np.corrcoef(t.ravel(), s.ravel())[0, 1]) < 0.5


def test_cli_demo_from_repo_root(tmp_path):
    run = subprocess.run([sys.executable, 'data/make_synthetic.py', '--out', str(tmp_path), '--seed', '1',
                          '--train_windows', '30', '--test_windows', '20', '--dim', '8', '--layout', 'packed'],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert '30 training windows' in run.stdout and '--pretrain=synthetic' in run.stdout
    packed = np.load(tmp_path / 'feature/val/spatialDataXsynthetic/packed.npy', mmap_mode='r')
    assert packed.shape == (30, 128, 8) and packed.dtype == np.float32
    bad = subprocess.run([sys.executable, 'data/make_synthetic.py', '--out', str(tmp_path), '--nope=1'],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and 'unknown config key' in bad.stderr
