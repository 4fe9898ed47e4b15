"""The data layer: method.md §3 windows against the released lists, readers, validation, feature layouts, batches."""
import os
import pickle
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from config import Config
from data.pack_features import pack
import feature_files
import load_data
import release_dataset
import safe_pickle
import sliding_windows
import thumos14

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pairs(starts, videos):
    return Counter(zip(np.asarray(starts).tolist(), np.asarray(videos).tolist()))


# --- the released window lists and boxes ---

@pytest.mark.parametrize('split,count', [('test', 5103), ('val', 4741)])
def test_windows_reproduce_released_list(shared, split, count):
    cfg = Config()
    anno = release_dataset.read_annotation(shared / f'original_data/{split}/thumos14_{split}_annotation.csv')
    starts, videos = sliding_windows.make_windows(anno, split, cfg)
    released = sliding_windows.read_window_info(shared / f'original_data/{split}/window_info.log')
    assert len(starts) == count == len(released[0])
    assert pairs(starts, videos) == pairs(*released)
    # the end-aligned repeats are kept, not de-duplicated
    assert max(pairs(starts, videos).values()) == 2
    # own order: videos by name, starts rising inside a video
    assert list(videos) == sorted(videos)


def test_training_boxes_equal_released_gt_info(shared):
    cfg = Config()
    anno = release_dataset.read_annotation(shared / 'original_data/val/thumos14_val_annotation.csv')
    released_starts, released_videos = sliding_windows.read_window_info(shared / 'original_data/val/window_info.log')
    info = safe_pickle.safe_unpickle(shared / 'original_data/val/gt_info.pkl')
    assert len(info) == len(released_starts)
    released = {}
    for s, v, boxes in zip(released_starts.tolist(), released_videos.tolist(), info):
        assert released.setdefault((s, v), boxes.tobytes()) == boxes.tobytes()   # a repeated window: same boxes
    starts, videos = sliding_windows.make_windows(anno, 'val', cfg)
    gt = sliding_windows.make_gt(anno, starts, videos, cfg)
    o = gt['offsets']
    mine = {(s, v): gt['box'][o[i]:o[i + 1]] for i, (s, v) in enumerate(zip(starts.tolist(), videos.tolist()))}
    assert mine.keys() == released.keys()
    for key, boxes in mine.items():
        assert boxes.dtype == np.float32 and boxes.tobytes() == released[key], key
    assert set(np.unique(gt['label'])) == set(range(1, 21))


def test_gen_data_info_cli_writes_released_order(shared, tmp_path):
    src = shared / 'original_data/val'
    out = tmp_path / 'val'
    run = subprocess.run([sys.executable, 'data/gen_data_info.py', '--anno', str(src / 'thumos14_val_annotation.csv'),
                          '--split', 'val', '--out', str(out), '--windows', str(src / 'window_info.log')],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (out / 'window_info.log').read_bytes() == (src / 'window_info.log').read_bytes()
    gt = release_dataset.load_gt(out / 'gt.npz')
    info = safe_pickle.safe_unpickle(src / 'gt_info.pkl')
    assert np.array_equal(np.diff(gt['offsets']), [len(a) for a in info])
    assert np.array_equal(gt['box'], np.concatenate(info))
    assert not list(out.glob('*.tmp')) and not list(out.glob('.*'))


def test_gen_data_info_cli_bad_input(tmp_path):
    csv = tmp_path / 'a.csv'
    csv.write_text('video,type,type_idx,startFrame,endFrame,frame_num\nv1,Diving,26,100,90,2000\n')
    run = subprocess.run([sys.executable, 'data/gen_data_info.py', '--anno', str(csv), '--split', 'test',
                          '--out', str(tmp_path / 'o')], cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0 and f'{csv}:2' in run.stderr and 'endFrame <= startFrame' in run.stderr
    assert not (tmp_path / 'o' / 'window_info.log').exists()


# --- windows on hand-made videos ---

def anno_frame(rows):
    import pandas as pd
    return pd.DataFrame(rows, columns=list(sliding_windows.ANNOTATION_COLUMNS))


def test_window_rules_by_hand():
    cfg = Config()
    anno = anno_frame([('b', 'Diving', 26, 10, 60, 400),        # L = 391 < 512
                       ('a', 'Diving', 26, 600, 700, 1033),     # L = 1024
                       ('a', 'Billiards', 12, 0, 500, 1033)])
    starts, videos = sliding_windows.candidate_windows(anno, False, cfg)
    # test: a gets 0, 256, 512 (n = 3) and the end-aligned 512 again; b gets one window at 0
    assert pairs(starts, videos) == pairs([0, 256, 512, 512, 0], ['a', 'a', 'a', 'a', 'b'])
    starts, videos = sliding_windows.candidate_windows(anno, True, cfg)
    assert pairs(starts, videos) == pairs([0, 128, 256, 384, 512, 512], ['a'] * 6)   # b: none
    gt = sliding_windows.make_gt(anno, starts, videos, cfg)
    counts = np.diff(gt['offsets'])
    # [600, 700) is inside windows 256, 384 and 512 (twice); [0, 500) only inside window 0
    assert counts.tolist() == [1, 0, 1, 1, 1, 1]
    assert gt['label'].tolist() == [3, 8, 8, 8, 8]
    np.testing.assert_allclose(gt['box'][1], [(600 - 256) / 512, (700 - 256) / 512, 1.0])
    s, v = sliding_windows.make_windows(anno, 'val', cfg)
    assert s.tolist() == [0, 256, 384, 512, 512]


def test_partial_overlap_rule():
    cfg = Config()
    # 100 frames, window [0, 512): 95 inside keeps it (0.95), 90 inside drops it (0.9 is not > 0.9)
    anno = anno_frame([('a', 'Diving', 26, 417, 517, 2000), ('a', 'Diving', 26, 422, 522, 2000)])
    gt = sliding_windows.make_gt(anno, np.array([0]), np.array(['a']), cfg)
    assert gt['offsets'].tolist() == [0, 1]
    np.testing.assert_allclose(gt['box'][0], [417 / 512, 1.0, 0.95], rtol=1e-6)


# --- readers and their errors ---

def test_read_annotation_errors(tmp_path):
    header = 'video,type,type_idx,startFrame,endFrame,frame_num\n'
    cases = {
        'video,type,startFrame,endFrame,frame_num\nv,Diving,1,2,3\n': ('missing column', "['type_idx']"),
        header + 'v,Diving,26,1,50,900\nv,Diving,26,80,80,900\n': ('a.csv:3', 'endFrame <= startFrame'),
        header + 'v,Diving,26,1,50,900\nw,Foo,8,80,90,900\n': ('a.csv:3', 'unknown class id'),
        header + 'v,Diving,26,1.5,50,900\n': ('a.csv:2', 'startFrame is not an integer'),
        header + 'v,Diving,26,1,50,900\nv,Diving,26,60,70,901\n': ('a.csv:2', 'frame_num differs'),
    }
    path = tmp_path / 'a.csv'
    for text, (where, what) in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError) as err:
            release_dataset.read_annotation(path)
        assert where in str(err.value) and what in str(err.value), str(err.value)
    with pytest.raises(ValueError, match='not found'):
        release_dataset.read_annotation(tmp_path / 'missing.csv')


def test_window_info_round_trip_and_errors(tmp_path):
    path = tmp_path / 'window_info.log'
    sliding_windows.write_window_info(path, np.array([0, 3584]), np.array(['video_a', 'video_b']))
    assert path.read_text() == '0, video_a\n3584, video_b\n'
    starts, videos = sliding_windows.read_window_info(path)
    assert starts.dtype == np.int64 and starts.tolist() == [0, 3584] and videos.tolist() == ['video_a', 'video_b']
    path.write_text('0, video_a\n12 video_b\n')
    with pytest.raises(ValueError, match=r'window_info\.log:2: expected'):
        sliding_windows.read_window_info(path)
    path.write_text('')
    with pytest.raises(ValueError, match='empty'):
        sliding_windows.read_window_info(path)


def small_gt():
    return dict(start=np.array([0, 128, 256]), video=np.array(['a', 'a', 'b']), offsets=np.array([0, 2, 2, 3]),
                label=np.array([3, 5, 20]), box=np.array([[.1, .2, 1], [.3, .9, .95], [0, .5, 1]], np.float32))


def test_gt_npz_round_trip_pad_and_errors(tmp_path):
    gt = small_gt()
    path = tmp_path / 'gt.npz'
    release_dataset.save_gt(path, gt)
    back = release_dataset.load_gt(path)
    for k in release_dataset.GT_FIELDS:
        assert np.array_equal(back[k], gt[k]), k
    with np.load(path, allow_pickle=False) as z:   # loads without pickles
        assert z['video'].dtype.kind == 'U'
    label, box, valid = load_data.pad_gt(back)
    assert label.tolist() == [[3, 5], [0, 0], [20, 0]]
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    np.testing.assert_array_equal(box[0], gt["box"][:2, :2])
    assert box.dtype == np.float32 and not box[1].any()
    bad = dict(gt, label=np.array([3, 5]))           # labels and boxes of different lengths
    with pytest.raises(ValueError, match='offsets'):
        release_dataset.save_gt(tmp_path / 'bad.npz', bad)
    assert not (tmp_path / 'bad.npz').exists()
    np.savez(tmp_path / 'bad2.npz', **dict(gt, label=np.array([3, 0, 20])))
    with pytest.raises(ValueError, match=r'bad2\.npz.*label\[1\] = 0'):
        release_dataset.load_gt(tmp_path / 'bad2.npz')


def test_train_gt_must_match_window_list(tmp_path, make_config):
    cfg = make_config(data_dir=str(tmp_path))
    (tmp_path / 'val').mkdir()
    release_dataset.save_gt(tmp_path / 'val/gt.npz', small_gt())
    sliding_windows.write_window_info(tmp_path / 'val/window_info.log', [0, 128, 384], ['a', 'a', 'b'])
    with pytest.raises(ValueError, match=r'window 2 is \(256, b\) but line 3'):
        release_dataset.load_train_gt(cfg)
    sliding_windows.write_window_info(tmp_path / 'val/window_info.log', [0, 128], ['a', 'a'])
    with pytest.raises(ValueError, match='3 windows'):
        release_dataset.load_train_gt(cfg)


# --- the restricted unpickler ---

class Evil:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_safe_unpickle_accepts_arrays_and_containers(tmp_path):
    value = [np.arange(6, dtype=np.float32).reshape(2, 3), {'a': (1, 2.5, 'x'), 'b': {3, 4}},
             np.zeros((0, 21), np.int64), np.float64(2.0), b'bytes']
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f'ok{protocol}.pkl'
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        back = safe_pickle.safe_unpickle(path)
        assert np.array_equal(back[0], value[0]) and back[0].dtype == np.float32
        assert back[1] == value[1] and back[2].shape == (0, 21) and back[3] == 2.0 and back[4] == b'bytes'


def test_safe_unpickle_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, obj in (('evil.pkl', [np.zeros(3), Evil()]), ('class.pkl', Config()), ('func.pkl', [np.save])):
        (tmp_path / name).write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(ValueError) as err:
            safe_pickle.safe_unpickle(tmp_path / name)
        assert name in str(err.value) and 'refused' in str(err.value)
    assert not (tmp_path / 'pwned').exists()


# --- features in three layouts ---

def make_feature_sets(root, rng, dim=8):
    """Per-video arrays, and the same windows cut by hand into a per-window folder."""
    lengths = {'va': 300, 'vb': 100}              # steps; vb is shorter than one window
    per_video = {v: rng.standard_normal((n, dim)) for v, n in lengths.items()}
    starts = np.array([0, 512, 688, 0])           # 688 // 4 = 172: the last 128 steps end at 300
    videos = np.array(['va', 'va', 'va', 'vb'])
    vid_dir, win_dir = root / 'video', root / 'window'
    vid_dir.mkdir()
    win_dir.mkdir()
    for v, a in per_video.items():
        np.save(vid_dir / f'{v}.npy', a.astype(np.float32))
    for i, (s, v) in enumerate(zip(starts, videos)):
        a = per_video[v][s // 4:s // 4 + 128]
        a = np.concatenate([a, np.repeat(a[-1:], 128 - len(a), 0)])   # pad by repeating the last step
        np.save(win_dir / f'{i}.npy', a)                               # float64, as released
    return starts, videos, vid_dir, win_dir


def test_three_layouts_give_the_same_windows(tmp_path, make_config):
    cfg = Config()
    starts, videos, vid_dir, win_dir = make_feature_sets(tmp_path, np.random.default_rng(0))
    by_window = release_dataset.load_features(cfg, 'test', starts, videos, folder=str(win_dir))
    by_video = release_dataset.load_features(cfg, 'test', starts, videos, folder=str(vid_dir))
    assert by_window.shape == (4, 128, 8) and by_window.dtype == np.float32
    np.testing.assert_array_equal(by_window, by_video)
    assert np.array_equal(by_window[3, 99], by_window[3, 127])        # the padded tail
    packed_dir = tmp_path / 'packed'
    packed_dir.mkdir()
    for f in win_dir.iterdir():
        (packed_dir / f.name).write_bytes(f.read_bytes())
    out, shape = pack(str(packed_dir), dtype='float16')
    assert shape == (4, 128, 8) and feature_files.feature_layout(str(packed_dir)) == 'packed'
    cfg16 = make_config(feature_dtype='float16')
    by_packed = release_dataset.load_features(cfg16, 'test', starts, videos, folder=str(packed_dir))
    assert by_packed.dtype == np.float16
    np.testing.assert_array_equal(by_packed, by_window.astype(np.float16))
    mapped = release_dataset.load_features(cfg16, 'test', starts, videos, folder=str(packed_dir), mmap=True)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, by_packed)
    sub = release_dataset.load_features(cfg, 'test', starts, videos, folder=str(packed_dir), indices=[2, 0])
    np.testing.assert_array_equal(sub, by_packed[[2, 0]].astype(np.float32))
    # a packed array for another window list is refused
    with pytest.raises(ValueError, match='does not fit the window list'):
        release_dataset.load_features(cfg, 'test', starts[:3], videos[:3], folder=str(packed_dir))


def test_feature_errors_name_the_file(tmp_path):
    cfg = Config()
    starts, videos, vid_dir, win_dir = make_feature_sets(tmp_path, np.random.default_rng(1))
    load = lambda folder, s=starts, v=videos: release_dataset.load_features(cfg, 'test', s, v, folder=str(folder))  # noqa: E731
    good = np.load(win_dir / '2.npy')
    for bad, what in ((good[:100], 'expected shape'), (good[:, :5], 'expected shape'),
                      (good.astype(np.int32), 'floating point'), (np.where(np.arange(128)[:, None] == 7, np.nan, good), 'NaN')):
        np.save(win_dir / '2.npy', bad)
        with pytest.raises(ValueError, match=r'2\.npy: .*' + what):
            load(win_dir)
    np.save(win_dir / '2.npy', good)
    (win_dir / '3.npy').unlink()
    with pytest.raises(ValueError, match=r'3\.npy: feature file not found'):
        load(win_dir)
    np.save(win_dir / '3.npy', good)
    np.save(win_dir / '4.npy', good)
    with pytest.raises(ValueError, match=r'4\.npy: the folder holds more windows'):
        load(win_dir)
    (win_dir / '4.npy').unlink()
    (win_dir / '2.npy').write_bytes(b'not numpy')
    with pytest.raises(ValueError, match=r'2\.npy: cannot read'):
        load(win_dir)
    np.save(vid_dir / 'vb.npy', np.zeros((100, 9), np.float32))       # another D than va
    with pytest.raises(ValueError, match=r'vb\.npy: expected shape \[\?, 8\]'):
        load(vid_dir)
    with pytest.raises(ValueError, match=r'va\.npy: window 1 starts at frame 1500, past the 300'):
        load(vid_dir, np.array([0, 1500]), np.array(['va', 'va']))
    with pytest.raises(ValueError, match='no features found'):
        load(tmp_path / 'nothing')


# --- batches ---

def test_epoch_batches_cover_every_window_and_reshuffle(make_config):
    cfg = Config()
    n = 203
    epochs = [load_data.epoch_batches(n, cfg, e) for e in range(3)]
    for batches in epochs:
        assert [len(b) for b in batches] == [48, 48, 48, 48, 11]
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(n))
        assert all(b.dtype == np.int64 for b in batches)
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    again = load_data.epoch_batches(n, cfg, 1)                               # deterministic
    assert all(np.array_equal(a, b) for a, b in zip(again, epochs[1]))
    other_seed = load_data.epoch_batches(n, make_config(seed=7), 1)
    assert not np.array_equal(np.concatenate(other_seed), np.concatenate(epochs[1]))
    fixed = make_config(reshuffle_each_epoch=False)
    assert np.array_equal(np.concatenate(load_data.epoch_batches(n, fixed, 0)),
                          np.concatenate(load_data.epoch_batches(n, fixed, 5)))


def test_released_and_small_batching(make_config):
    cfg = make_config(released_batching=True, reshuffle_each_epoch=False)
    b = load_data.epoch_batches(100, cfg, 0)                 # 4 left over: dropped
    assert [len(x) for x in b] == [48, 48] and len(np.unique(np.concatenate(b))) == 96
    b = load_data.epoch_batches(103, cfg, 0)                 # 7 left over: one more batch of the last 48
    order = np.concatenate(b[:2])
    assert [len(x) for x in b] == [48, 48, 48]
    assert np.array_equal(b[2][:41], order[55:])             # the last 48 of the shuffled order
    assert set(b[2][41:].tolist()) == set(range(103)) - set(order.tolist())
    small = load_data.epoch_batches(500, make_config(small_num_data_for_test=True), 3)
    assert len(small) == 1 and sorted(small[0].tolist()) == list(range(48))


def test_video_fps(tmp_path):
    path = tmp_path / 'fps.csv'
    path.write_text('video,fps\nvideo_x,25\nvideo_test_0000950,29.97\n')
    fps = thumos14.video_fps(str(path))
    assert fps('video_x') == 25.0 and fps['video_test_0000950'] == 29.97
    assert fps('video_test_0001207') == 24.0 and fps('anything') == 30.0
    assert thumos14.video_fps()('video_test_0000950') == 25.0
    path.write_text('video,fps\nvideo_x,25\nvideo_y,fast\n')
    with pytest.raises(ValueError, match=r'fps\.csv:3'):
        thumos14.video_fps(str(path))


def test_pack_refuses_gaps_and_bad_files(tmp_path):
    for i in (0, 2):
        np.save(tmp_path / f'{i}.npy', np.zeros((128, 4)))
    with pytest.raises(ValueError, match=r'2\.npy: window files are not numbered 0\.\.N-1'):
        pack(str(tmp_path))
    np.save(tmp_path / '1.npy', np.full((128, 4), np.inf))
    with pytest.raises(ValueError, match=r'1\.npy: NaN or inf'):
        pack(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['0.npy', '1.npy', '2.npy']    # nothing half-written
    run = subprocess.run([sys.executable, 'data/pack_features.py', str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0 and '1.npy: NaN or inf' in run.stderr
