"""Well-formed but wrong input: each case fails with one ValueError naming the file (and line
or field), or warns and goes on where the input is legal but suspicious."""
import contextlib
import gzip
import warnings

import numpy as np
import pandas as pd
import pytest

import config as C
import evaluate
import fuse
import load_data
import postprocess as P
import predictions
import release_dataset
import sliding_windows
import thumos14

HEADER = 'video,type,type_idx,startFrame,endFrame,frame_num\n'


@contextlib.contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        yield


# ----------------------------------------------------------------------------- predictions and fusion

def stream(seed, videos=('video_test_0000004', 'video_test_0001207'), per=70, anchors=True):
    """A predictions table: two windows per video, `per` anchors each, with the anchor column."""
    rng = np.random.default_rng(seed)
    n = 2 * per * len(videos)
    start = np.tile(np.repeat([0, 256], per), len(videos))
    xmin = rng.uniform(0, 400, n) + start
    arrays = dict(video_name=np.repeat(np.array(videos, dtype=object), 2 * per), start=start,
                  conf=rng.uniform(0, 1, n), xmin=xmin, xmax=xmin + rng.uniform(5, 100, n),
                  scores=rng.dirichlet(np.full(21, 0.5), n))
    return predictions.predictions_frame(arrays, anchors_per_window=per if anchors else None)


def shuffle_inside_windows(df, seed=0):
    """The rows of every window in another order (windows themselves in place)."""
    rng = np.random.default_rng(seed)
    key = df['video_name'].astype(str) + '@' + df['start'].astype(str)
    order = np.concatenate([rng.permutation(np.flatnonzero((key == k).to_numpy())) for k in pd.unique(key)])
    return df.iloc[order].reset_index(drop=True)


def test_anchor_column_written_last_and_read_back(tmp_path):
    t = stream(0)
    assert list(t.columns) == predictions.PRED_COLUMNS + ['anchor'] and t['anchor'].tolist()[:3] == [0, 1, 2]
    predictions.write_predictions(str(tmp_path / 't.csv'), t)
    text = (tmp_path / 't.csv').read_text().splitlines()
    assert text[0] == ','.join(predictions.PRED_COLUMNS) + ',anchor' and text[2].endswith(',1')
    back = predictions.read_predictions(str(tmp_path / 't.csv'))
    pd.testing.assert_frame_equal(back, t)
    # without the column, the method.md §2 columns are the same bytes
    predictions.write_predictions(str(tmp_path / 'plain.csv'), t[predictions.PRED_COLUMNS])
    plain = (tmp_path / 'plain.csv').read_text().splitlines()
    assert [line.rsplit(',', 1)[0] for line in text] == plain


def test_reordered_anchors_refused_with_anchor_column(tmp_path):
    t, s = stream(0), shuffle_inside_windows(stream(1))
    predictions.write_predictions(str(tmp_path / 't.csv'), t)
    predictions.write_predictions(str(tmp_path / 's.csv'), s)
    with pytest.raises(ValueError, match=r's\.csv:2: anchor: \d+, but .*t\.csv:2 has anchor 0'):
        fuse.fuse_files(str(tmp_path / 't.csv'), str(tmp_path / 's.csv'), str(tmp_path / 'f.txt'), C.Config(),
                     thumos14.video_fps())
    with pytest.raises(SystemExit, match=r'^error: .*s\.csv:2: anchor'):
        fuse.main(['--temporal', str(tmp_path / 't.csv'), '--spatial', str(tmp_path / 's.csv'),
                   '--out', str(tmp_path / 'f.txt')])
    assert not (tmp_path / 'f.txt').exists()


def test_aligned_anchor_columns_fuse_without_warning():
    t, s = stream(0), stream(1)
    with no_warnings():
        fused = fuse.fuse_predictions(t, s, C.Config())
    assert fused['anchor'].tolist() == t['anchor'].tolist()
    cols = ['conf', 'xmin', 'xmax'] + predictions.SCORE_COLUMNS
    np.testing.assert_array_equal(fused[cols].to_numpy(), t[cols].to_numpy() * 2 / 3 + s[cols].to_numpy() / 3)


@pytest.mark.parametrize('which', ['temporal', 'spatial', 'temporal and spatial'])
def test_missing_anchor_column_warns(which):
    t, s = stream(0), shuffle_inside_windows(stream(1))
    if 'temporal' in which:
        t = t[predictions.PRED_COLUMNS]
    if 'spatial' in which:
        s = s[predictions.PRED_COLUMNS]
    with pytest.warns(thumos14.InputWarning, match=f'^{which}: no anchor column: cannot verify'):
        fuse.fuse_predictions(t, s, C.Config())


def test_rows_per_window_not_constant_refused_without_anchor_column():
    t, s = stream(0, anchors=False), stream(1, anchors=False)
    keep = np.ones(len(t), bool)
    keep[[150, 151]] = False   # window 3 (video_test_0001207, 0) loses two rows in both streams
    t, s = t[keep].reset_index(drop=True), s[keep].reset_index(drop=True)
    with pytest.raises(ValueError, match=r'^t\.csv:142: video_name, start: window \(video_test_0001207, 0\) '
                                         r'has 68 rows, where most windows have 70'):
        fuse.fuse_predictions(t, s, C.Config(), names=('t.csv', 's.csv'))


def test_window_twice_in_a_row_is_fine_without_anchor_column():
    t, s = stream(0, anchors=False), stream(1, anchors=False)
    t = pd.concat([t.iloc[:70], t], ignore_index=True)   # the first window listed twice, as released lists do
    s = pd.concat([s.iloc[:70], s], ignore_index=True)
    with pytest.warns(thumos14.InputWarning, match='no anchor column'):
        fuse.fuse_predictions(t, s, C.Config())


def test_window_appearing_twice_apart_warns(tmp_path):
    t = stream(0)
    twice = pd.concat([t, t.iloc[:70]], ignore_index=True)
    predictions.write_predictions(str(tmp_path / 'p.csv'), twice)
    with pytest.warns(thumos14.InputWarning, match=r'p\.csv:282: video_name, start: window '
                                                   r'\(video_test_0000004, 0\) appears again.*line 2'):
        predictions.read_predictions(str(tmp_path / 'p.csv'))


@pytest.mark.parametrize('stream_name', ['t.csv', 's.csv'])
def test_nan_in_one_stream_refused(stream_name):
    t, s = stream(0), stream(1)
    (t if stream_name == 't.csv' else s).loc[7, 'score_3'] = np.nan
    with pytest.raises(ValueError, match=rf'^{stream_name}:9: score_3: nan is not a finite number'):
        fuse.fuse_predictions(t, s, C.Config(), names=('t.csv', 's.csv'))


def test_bad_anchor_value_names_line(tmp_path):
    t = stream(0)
    predictions.write_predictions(str(tmp_path / 'p.csv'), t)
    lines = (tmp_path / 'p.csv').read_text().splitlines()
    lines[5] = lines[5].rsplit(',', 1)[0] + ',-1'
    (tmp_path / 'p.csv').write_text('\n'.join(lines) + '\n')
    with pytest.raises(ValueError, match=r'p\.csv, line 6: column anchor'):
        predictions.read_predictions(str(tmp_path / 'p.csv'))


# ----------------------------------------------------------------------------- annotations and window lists

@pytest.mark.parametrize('text, message', [
    (HEADER, r'a\.csv:2: no annotation rows after the header'),
    (HEADER + 'v,Diving,26,10,50,900\nv,Diving,26,800,950,900\n', r'a\.csv:3: endFrame is beyond frame_num'),
    (HEADER + 'v,Diving,26,1000,1050,900\n', r'a\.csv:2: endFrame is beyond frame_num'),
])
def test_bad_annotation_refused(tmp_path, text, message):
    (tmp_path / 'a.csv').write_text(text)
    with pytest.raises(ValueError, match=message):
        release_dataset.read_annotation(tmp_path / 'a.csv')


def test_duplicate_annotation_rows_warn(tmp_path):
    (tmp_path / 'a.csv').write_text(HEADER + 'v,Diving,26,10,50,900\nv,Diving,26,60,80,900\nv,Diving,26,10,50,900\n')
    with pytest.warns(thumos14.InputWarning, match=r'a\.csv:4: instance repeats line 2'):
        anno = release_dataset.read_annotation(tmp_path / 'a.csv')
    assert len(anno) == 3


@pytest.mark.parametrize('make', [
    lambda text: text.encode('utf-16'),
    lambda text: text.encode('utf-16-le'),
    lambda text: gzip.compress(text.encode()),
    lambda text: bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
])
@pytest.mark.parametrize('reader, text', [
    (release_dataset.read_annotation, HEADER + 'v,Diving,26,10,50,900\n'),
    (predictions.read_predictions, ','.join(predictions.PRED_COLUMNS) + '\nv,0,0.5,1,2' + ',0.0' * 21 + '\n'),
    (thumos14.read_results, 'video_test_0000004\t1.0\t2.0\t7\t0.5\n'),
    (sliding_windows.read_window_info, '0, video_test_0000004\n'),
])
def test_binary_and_utf16_files_named(tmp_path, make, reader, text):
    path = tmp_path / 'bad.file'
    path.write_bytes(make(text))
    with pytest.raises(ValueError, match=r'bad\.file: not a text file \((a NUL byte|a UTF-16/32 LE byte-order mark)'):
        reader(str(path))


def train_dir(tmp_path, anno_rows, windows):
    (tmp_path / 'val').mkdir()
    (tmp_path / 'val' / 'thumos14_val_annotation.csv').write_text(HEADER + ''.join(r + '\n' for r in anno_rows))
    sliding_windows.write_window_info(tmp_path / 'val' / 'window_info.log', [s for s, _ in windows], [v for _, v in windows])
    return C.Config(data_dir=str(tmp_path))


def test_training_window_of_unannotated_video_refused(tmp_path):
    cfg = train_dir(tmp_path, ['a,Diving,26,100,200,3000'], [(0, 'a'), (0, 'b')])
    with pytest.raises(ValueError, match=r'window_info\.log:2: video: b is not in .*annotation\.csv'):
        release_dataset.load_train_gt(cfg)


def test_training_window_beyond_video_refused(tmp_path):
    cfg = train_dir(tmp_path, ['a,Diving,26,100,200,3000'], [(0, 'a'), (3000, 'a')])
    with pytest.raises(ValueError, match=r'window_info\.log:2: start: window \(3000, a\) starts at or beyond the 3000'):
        release_dataset.load_train_gt(cfg)


def test_annotated_video_without_window_warns(tmp_path):
    cfg = train_dir(tmp_path, ['a,Diving,26,100,200,3000', 'b,Diving,26,100,200,3000'], [(0, 'a')])
    with pytest.warns(thumos14.InputWarning, match=r'annotation\.csv: video: 1 annotated videos have no window.*: b;'):
        gt = release_dataset.load_train_gt(cfg)
    assert gt['video'].tolist() == ['a']


def test_test_window_list_checked_against_annotation(tmp_path):
    (tmp_path / 'test').mkdir()
    (tmp_path / 'test' / 'thumos14_test_annotation.csv').write_text(HEADER + 'a,Diving,26,100,200,3000\n'
                                                                     'c,Diving,26,100,200,600\n')
    sliding_windows.write_window_info(tmp_path / 'test' / 'window_info.log', [0, 0], ['a', 'b'])
    folder = tmp_path / 'feat' / 'test' / 'temporalDataXx'
    folder.mkdir(parents=True)
    for i in range(2):
        np.save(folder / f'{i}.npy', np.zeros((128, 4), np.float32))
    cfg = C.Config(data_dir=str(tmp_path), feature_path=str(tmp_path / 'feat'), pretrain='x', mode='temporal')
    with pytest.warns(thumos14.InputWarning) as record:
        load_data.load_test_data(cfg)
    text = [str(w.message) for w in record]
    assert any('window_info.log:2: video: b is not in' in m for m in text), text
    assert any('annotated videos have no window' in m and ': c;' in m for m in text), text


# ----------------------------------------------------------------------------- ground truth and evaluation

@pytest.mark.parametrize('content', [
    lambda good: good[:len(good) // 2],     # truncated
    lambda good: good[:10],
    lambda good: b'',
    lambda good: b'not a zip at all\n',
])
def test_truncated_gt_npz_names_path(tmp_path, content):
    release_dataset.save_gt(tmp_path / 'good.npz', dict(start=np.array([0]), video=np.array(['a']), offsets=np.array([0, 1]),
                                                 label=np.array([3]), box=np.array([[.1, .2, 1]], np.float32)))
    (tmp_path / 'gt.npz').write_bytes(content((tmp_path / 'good.npz').read_bytes()))
    with pytest.raises(ValueError, match=r'gt\.npz: cannot read as \.npz'):
        release_dataset.load_gt(tmp_path / 'gt.npz')


def test_npy_instead_of_npz_named(tmp_path):
    with open(tmp_path / 'gt.npz', 'wb') as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match=r'gt\.npz: cannot read as \.npz: a single \.npy array'):
        release_dataset.load_gt(tmp_path / 'gt.npz')


def small_gt_dir(folder):
    folder.mkdir()
    (folder / 'detclasslist.txt').write_text('7 BaseballPitch\n9 BasketballDunk\n')
    (folder / 'BaseballPitch_test.txt').write_text('v1 0 10\nv2 5 9\n')
    (folder / 'BasketballDunk_test.txt').write_text('v1 20 30\n')
    (folder / 'Ambiguous_test.txt').write_text('v3 0 1\n')
    return folder


@pytest.mark.parametrize('metrics', [('kit',), ('kit', 'anet')])
def test_result_with_no_known_video_warns_once(tmp_path, metrics):
    gt = small_gt_dir(tmp_path / 'gt')
    (tmp_path / 'r.txt').write_text('video_validation_1 0 10 7 0.5\nvideo_validation_2 0 10 9 0.5\n')
    with pytest.warns(thumos14.EvalWarning) as record:
        res = evaluate.evaluate(tmp_path / 'r.txt', gt, [.5], metrics=metrics)
    hits = [str(w.message) for w in record if 'none of its 2 videos' in str(w.message)]
    assert len(hits) == 1 and 'r.txt' in hits[0] and 'video_validation_1' in hits[0], [str(w.message) for w in record]
    assert all(r['map'] == [0.0] for r in res.values())


def test_result_with_some_unknown_videos_counts_them(tmp_path):
    gt = small_gt_dir(tmp_path / 'gt')
    (tmp_path / 'r.txt').write_text('v1 0 10 7 0.5\nv3 0 1 7 0.4\nv9 0 10 9 0.5\nv9 3 4 9 0.1\nv8 1 2 7 0.2\n')
    with pytest.warns(thumos14.EvalWarning, match=r'r\.txt: 3 of 5 detections are on 2 videos without any '
                                                  r'ground-truth instance.*v9, v8'):
        res = evaluate.evaluate_kit(tmp_path / 'r.txt', gt, [.5])
    assert res['num_unknown_video_detections'] == 3
    # known videos only (an Ambiguous-only video counts as known): no warning
    (tmp_path / 'r.txt').write_text('v1 0 10 7 0.5\nv2 5 9 7 0.4\nv1 20 30 9 0.5\nv3 0 1 7 0.1\n')
    with no_warnings():
        res = evaluate.evaluate(tmp_path / 'r.txt', gt, [.5], metrics=('kit', 'anet'))
    assert res['kit']['num_unknown_video_detections'] == res['anet']['num_unknown_video_detections'] == 0
