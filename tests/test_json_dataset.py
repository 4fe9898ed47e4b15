"""The field's layout (annotation JSON + per-video I3D features, json_dataset.py, method.md §15): the reader,
the frame / step / second conversions, the stream split, early fusion, every refusal, the
synthetic i3d layout and the JSON as evaluation ground truth."""
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

import classes
import config
import evaluate
import json_dataset
import load_data
import release_dataset
import sliding_windows
import thumos14
from conftest import build_config
from data.make_synthetic import I3D_FEATURES, I3D_JSON, make_synthetic

DIM = 8   # channels per stream in the hand-made files


def i3d_config(root, dim=DIM, **kw):
    cfg = build_config(data_source='json', annotation_json=str(root / 'anno.json'),
                       feature_dir=str(root / 'feat'), spatial_channels=(0, dim),
                       temporal_channels=(dim, 2 * dim), **kw)
    return config.resolve_defaults(cfg)


def write_dataset(root, database, features):
    """anno.json and feat/<video>.npy; `features` maps video -> array."""
    (root / 'feat').mkdir(exist_ok=True)
    (root / 'anno.json').write_text(json.dumps({'database': database}))
    for video, a in features.items():
        np.save(root / 'feat' / f'{video}.npy', a)


def video(subset, seconds, fps, annotations):
    return dict(subset=subset, duration=seconds, fps=fps,
                annotations=[dict(label=label, segment=[s, e]) for label, s, e in annotations])


def step_features(steps, dim=DIM):
    """[T, 2 dim]: RGB channels hold +t, flow channels -t, so a read says which step and stream it is."""
    t = np.arange(steps, dtype=np.float32)[:, None]
    return np.concatenate([np.repeat(t, dim, 1), np.repeat(-t, dim, 1)], axis=1)


@pytest.fixture
def small(tmp_path):
    """Two training videos and one 25 fps test video, 4-frame steps of 16-frame clips."""
    db = {'video_validation_1': video('Validation', 40.0, 30.0, [('HighJump', 3.0, 6.0), ('LongJump', 20.0, 25.5)]),
          'video_validation_2': video('Validation', 30.0, 30.0, [('Diving', 1.0, 4.0)]),
          'video_test_1': video('Test', 48.0, 25.0, [('Billiards', 10.0, 12.0), ('Shotput', 30.0, 33.2)])}
    feats = {v: step_features(int((d['duration'] * d['fps'] - 16) // 4 + 1)) for v, d in db.items()}
    write_dataset(tmp_path, db, feats)
    return tmp_path, db, feats


# --- conversions ---

def test_step_centres_and_the_eight_frame_offset():
    assert json_dataset.step_centre_frame(0) == 8 and json_dataset.step_centre_frame(10) == 48  # frames 4t .. 4t + 15
    assert json_dataset.frame_to_step(8) == 0 and json_dataset.frame_to_step(48) == 10
    # ActionFormer's seconds -> steps, s * fps / 4 - 2
    assert json_dataset.frame_to_step(json_dataset.seconds_to_frames(3.0, 30.0)) == pytest.approx(3.0 * 30 / 4 - 2)
    # A window starting at frame s reads step s // 4 - 2 + j: centred on frame 4 (s // 4) + 4j.
    steps = json_dataset.window_steps([0, 256, 1001], 128)
    assert steps[:, 0].tolist() == [-2, 62, 248] and np.all(np.diff(steps, axis=1) == 1)
    assert np.array_equal(json_dataset.step_centre_frame(steps[1]), 256 + 4 * np.arange(128))


def test_seconds_frames_steps_round_trip():
    rng = np.random.default_rng(0)
    for fps in (30.0, 25.0, 24.0, 29.97):
        seconds = rng.uniform(0, 600, 1000)
        frames = json_dataset.seconds_to_frames(seconds, fps)
        back = json_dataset.frames_to_seconds(json_dataset.step_centre_frame(json_dataset.frame_to_step(frames)), fps)
        assert np.allclose(back, seconds, rtol=0, atol=1e-9)
        # Whole frames (what the annotation rows hold) come back within half a frame.
        assert np.all(np.abs(json_dataset.frames_to_seconds(np.rint(frames), fps) - seconds) <= 0.5 / fps + 1e-12)


# --- the reader ---

def test_json_reader_splits_frames_and_fps(small):
    root, db, _ = small
    cfg = i3d_config(root)
    anno, videos = json_dataset.read_split(cfg, 'val')
    assert videos['video'].tolist() == ['video_validation_1', 'video_validation_2']
    assert anno[['startFrame', 'endFrame']].to_numpy().tolist() == [[90, 180], [600, 765], [30, 120]]
    assert anno['type_idx'].tolist() == [40, 51, 26] and set(anno['frame_num']) == {1200, 900}
    anno, videos = json_dataset.read_split(cfg, 'test')
    assert anno[['startFrame', 'endFrame']].to_numpy().tolist() == [[250, 300], [750, 830]]   # at 25 fps
    assert videos['steps'].tolist() == [(1200 - 16) // 4 + 1]
    # The fps table comes from the JSON: with data_source=json and no fps_file, test.py and fuse.py use it.
    assert cfg.fps_file == cfg.annotation_json
    assert thumos14.video_fps(cfg.fps_file)['video_test_1'] == 25.0
    with pytest.raises(ValueError, match='no subset'):
        json_dataset.read_split(cfg, 'train2')


def test_windows_and_steps_read(small):
    root, db, feats = small
    cfg = i3d_config(root, mode='spatial')
    data = load_data.load_test_data(cfg)
    # 48 s at 25 fps = 1200 frames: §3 test windows at 0, 256, 512 and the end-aligned one at 1200 - 9 - 512.
    assert data['starts'].tolist() == [0, 256, 512, 679] and set(data['videos']) == {'video_test_1'}
    x = data['features']
    assert x.shape == (4, 128, DIM)
    t = len(feats['video_test_1'])
    expected = np.clip(json_dataset.window_steps(data['starts'], 128), 0, t - 1)   # head and tail repeat the end steps
    assert np.array_equal(x[..., 0], expected) and x[0, :3, 0].tolist() == [0, 0, 0]
    train = load_data.load_train_data(cfg)
    assert train['features'].shape[2] == DIM and train['gt_valid'].any(1).all()   # every window keeps a box
    assert set(train['videos']) == {'video_validation_1', 'video_validation_2'}


@pytest.mark.parametrize('mode, sign, width', [('spatial', 1, DIM), ('temporal', -1, DIM), ('concat', None, 2 * DIM)])
def test_stream_split(small, mode, sign, width):
    root, _, _ = small
    x = load_data.load_test_data(i3d_config(root, mode=mode))['features']
    assert x.shape[2] == width
    if sign is None:   # early fusion: RGB channels, then flow channels, i.e. the file's row
        assert np.array_equal(x[..., :DIM], -x[..., DIM:]) and x.max() > 0
    else:
        assert np.array_equal(x, sign * np.abs(x))


def test_channels_are_configurable(small):
    root, _, _ = small
    cfg = i3d_config(root, mode='spatial')
    cfg.spatial_channels, cfg.temporal_channels = (DIM, 2 * DIM), (0, DIM)   # flow stored first
    x = load_data.load_test_data(cfg)['features']
    assert x.max() == 0 and x.min() < 0


def test_a_planted_instance_is_found_at_its_time_in_seconds(tmp_path):
    """An instance at a known time lights the steps whose centres it holds; read back through the
    windows and mapped to seconds as test.py / post-processing map a box (frame = window start +
    4 j, seconds = frame / fps), it is at its time within one step."""
    fps, start_s, end_s = 25.0, 17.3, 21.05
    frames = 60 * 25
    steps = (frames - 16) // 4 + 1
    centre = json_dataset.step_centre_frame(np.arange(steps))
    a = np.zeros((steps, 2 * DIM), np.float32)
    a[(centre >= start_s * fps) & (centre < end_s * fps)] = 1.0
    write_dataset(tmp_path, {'video_test_9': video('Test', 60.0, fps, [('HighJump', start_s, end_s)])},
                  {'video_test_9': a})
    data = load_data.load_test_data(i3d_config(tmp_path, mode='concat'))
    w, j = np.nonzero(data['features'][..., 0] > 0)
    assert len(w)
    lo = (data['starts'][w] + 4 * j).min() / fps
    hi = (data['starts'][w] + 4 * (j + 1)).max() / fps
    step_s = 4 / fps
    assert abs(lo - start_s) <= step_s and abs(hi - end_s) <= step_s


# --- refusals: one ValueError naming the video and the field ---

def refuse(root, db, feats, *words, split='val'):
    write_dataset(root, db, feats)
    with pytest.raises(ValueError) as err:
        json_dataset.read_split(i3d_config(root), split)
    message = str(err.value)
    assert '\n' not in message
    for word in words:
        assert word in message, message
    return message


def test_refusals(small):
    root, db, feats = small
    ok = db['video_validation_1']
    cases = [
        ({'video_validation_1': {k: v for k, v in ok.items() if k != 'fps'}}, 'fps'),
        ({'video_validation_1': {k: v for k, v in ok.items() if k != 'subset'}}, 'subset'),
        ({'video_validation_1': dict(ok, subset='Training')}, 'subset'),
        ({'video_validation_1': dict(ok, duration=-3)}, 'duration'),
        ({'video_validation_1': dict(ok, annotations=[{'segment': [1, 2]}])}, 'label'),
        ({'video_validation_1': dict(ok, annotations=[{'label': 'HighJump'}])}, 'segment'),
        ({'video_validation_1': dict(ok, annotations=[{'label': 'HighJump', 'segment': [1]}])}, 'segment'),
        ({'video_validation_1': dict(ok, annotations=[{'label': 'HighJump', 'segment': [-1, 2]}])}, 'segment'),
        ({'video_validation_1': dict(ok, annotations=[{'label': 'HighJump', 'segment': [5, 4]}])}, 'segment'),
        ({'video_validation_1': dict(ok, annotations=[{'label': 'HighJump', 'segment': [1, 2], 'label_id': 3}])},
         'label_id'),
    ]
    for database, field in cases:
        refuse(root, database, {'video_validation_1': feats['video_validation_1']}, 'video_validation_1', field)
    # A label outside the class-list file the config names (without one, the JSON's labels are the classes).
    classes.write_class_list(root / 'classes.txt', thumos14.THUMOS14_CLASSES)
    write_dataset(root, {'video_validation_1': dict(ok, annotations=[{'label': 'Juggling', 'segment': [1, 2]}])},
                  {'video_validation_1': feats['video_validation_1']})
    with pytest.raises(ValueError) as err:
        json_dataset.read_split(i3d_config(root, class_list=str(root / 'classes.txt')), 'val')
    assert 'video_validation_1' in str(err.value) and 'label' in str(err.value) and '\n' not in str(err.value)
    (root / 'anno.json').write_text(json.dumps({'videos': {}}))
    with pytest.raises(ValueError, match="missing field 'database'"):
        json_dataset.read_split(i3d_config(root), 'val')
    # A label outside THUMOS14's classes is refused where the classes are THUMOS14's; the data
    # source reads any label set (its classes are the file's own).
    juggling = {'video_validation_1': dict(ok, annotations=[{'label': 'Juggling', 'segment': [1, 2]}])}
    write_dataset(root, juggling, {'video_validation_1': feats['video_validation_1']})
    with pytest.raises(ValueError, match="video_validation_1: annotation 0: field label 'Juggling'"):
        thumos14.read_annotation_json(root / 'anno.json', thumos14.THUMOS14_CLASSES)
    assert json_dataset.read_split(i3d_config(root), 'val')[0]['type'].tolist() == ['Juggling']


def test_feature_files_that_do_not_fit_are_refused(small):
    root, db, feats = small
    one = {'video_validation_1': db['video_validation_1']}
    short = feats['video_validation_1'][:100]   # 100 steps cover 412 frames; LongJump ends at frame 765
    message = refuse(root, one, {'video_validation_1': short}, 'video_validation_1', 'shorter', 'segment')
    assert 'frame 765' in message
    wide = np.zeros((len(feats['video_validation_1']), 3 * DIM), np.float32)
    refuse(root, one, {'video_validation_1': wide}, 'video_validation_1', 'width', str(2 * DIM))


def test_missing_feature_files_are_named(small):
    root, db, _ = small
    os.remove(root / 'feat' / 'video_validation_2.npy')
    cfg = i3d_config(root)
    with pytest.warns(thumos14.InputWarning, match='video_validation_2') as caught:
        anno, videos = json_dataset.read_split(cfg, 'val')
    assert 'never trained on' in str(caught[0].message) and '1 of the 2 Validation' in str(caught[0].message)
    assert videos['video'].tolist() == ['video_validation_1'] and 'video_validation_2' not in set(anno['video'])
    os.remove(root / 'feat' / 'video_validation_1.npy')
    with pytest.raises(ValueError, match='no feature file'):
        json_dataset.read_split(cfg, 'val')


def test_config_switches():
    cfg = config.apply_overrides(config.Config(), ['--mode=concat', '--pretrain=I3D', '--data_source=i3d'])
    assert cfg.run_name == 'concat_I3D_decouple_ssad' and cfg.fps_file == cfg.annotation_json
    assert config.get_eval_gt_path(cfg) == cfg.annotation_json
    assert config.Config().data_source == 'release' and config.Config().fps_file == ''
    for bad, field in (('--data_source=csv', 'data_source'), ('--spatial_channels=0,1500', 'overlap'),
                       ('--temporal_channels=9,3', 'temporal_channels'), ('--mode=both', 'concat')):
        with pytest.raises(ValueError, match=field):
            config.apply_overrides(config.Config(), [bad])


# --- early fusion on the release's per-stream folders ---

def test_concat_mode_reads_both_release_folders(tmp_path):
    cfg = build_config(data_dir=str(tmp_path / 'thumos14'), feature_path=str(tmp_path / 'feature'),
                       pretrain='synthetic')
    make_synthetic(str(tmp_path), cfg, seed=1, dim=6, train_windows=20, test_windows=10)
    starts, videos = sliding_windows.read_window_info(tmp_path / 'thumos14/test/window_info.log')
    parts = [release_dataset.load_features(cfg, 'test', starts, videos, m) for m in ('spatial', 'temporal')]
    both = release_dataset.load_features(cfg, 'test', starts, videos, 'concat', indices=[3, 1])
    assert both.shape == (2, 128, 12)
    assert np.array_equal(both, np.concatenate(parts, axis=2)[[3, 1]])


# --- the synthetic dataset in the field's layout ---

@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_i3d')
    info = make_synthetic(str(root), build_config(), seed=3, dim=6, train_windows=40, test_windows=30, layout='i3d')
    cfg = build_config(data_source='i3d', annotation_json=str(root / I3D_JSON), feature_dir=str(root / I3D_FEATURES),
                       spatial_channels=(0, 6), temporal_channels=(6, 12))
    return root, info, config.resolve_defaults(cfg)


def test_synthetic_i3d_layout(synthetic):
    root, info, cfg = synthetic
    assert sorted(os.listdir(root)) == ['annotations', 'i3d_features'] and info['dim'] == 12
    db = json.loads((root / I3D_JSON).read_text())['database']
    assert {d['subset'] for d in db.values()} == {'Validation', 'Test'}
    for name, d in db.items():
        a = np.load(root / I3D_FEATURES / f'{name}.npy')
        frames = round(d['duration'] * d['fps'])
        assert a.shape == ((frames - 16) // 4 + 1, 12) and a.dtype == np.float32   # 16-frame clips, stride 4
        for ann in d['annotations']:
            assert thumos14.CLASS_NAMES[ann['label_id'] + 1] == ann['label']
    assert db['video_test_0000950']['fps'] == 25.0
    # The §3 windows of the JSON are the counts asked for.
    assert len(json_dataset.load_train_gt(cfg)['start']) == 40
    assert len(json_dataset.test_windows(cfg)[0]) == 30


def test_synthetic_instances_sit_at_their_time(synthetic):
    """The features carry each instance at the steps whose 16-frame clips are centred inside it."""
    root, _, cfg = synthetic
    db = thumos14.read_annotation_json(cfg.annotation_json)
    inst = db['instances'].merge(db['videos'], on='video')
    first = inst.groupby('video').first().reset_index()
    inside, outside = [], []
    for _, r in first.iterrows():
        a = np.load(root / I3D_FEATURES / f'{r["video"]}.npy')
        t = json_dataset.frame_to_step(json_dataset.seconds_to_frames([r['start'], r['end']], r['fps']))
        lo, hi = int(np.ceil(t[0])), int(np.floor(t[1]))
        norm = np.linalg.norm(a, axis=1)
        inside.append(norm[lo:hi + 1].mean())
        outside.append(norm[max(lo - 40, 0):max(lo - 8, 1)].mean())
    assert np.mean(inside) > np.mean(outside) * 1.2


# --- the JSON as evaluation ground truth ---

def test_json_ground_truth_scores_itself_perfectly(synthetic, tmp_path, capsys):
    root, _, cfg = synthetic
    gt = evaluate.read_ground_truth(cfg.annotation_json)
    assert len(gt['ambiguous']) == 0 and list(gt['class_ids']) == thumos14.CLASS_IDS
    g = gt['gt']
    det = pd.DataFrame({'video': g['video'], 'start': g['start'], 'end': g['end'],
                        'class_id': np.array(thumos14.CLASS_IDS)[g['cls']], 'score': 0.9})
    res = evaluate.evaluate(det, cfg.annotation_json, metrics=('kit', 'anet'))
    has = np.bincount(g['cls'], minlength=20) > 0
    for m in ('kit', 'anet'):
        aps = np.array([res[m]['per_class'][c][4] for c in thumos14.CLASS_IDS])
        assert np.allclose(aps[has], 1.0) and np.allclose(aps[~has], 0.0)
    path = tmp_path / 'self.txt'
    thumos14.write_results(path, det)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        evaluate.main([str(path), str(path), '--labels', 'a', 'b', '--metric', 'both', '--compare',
                       '--data_source=i3d', f'--annotation_json={cfg.annotation_json}'])
    out = capsys.readouterr().out
    assert 'annotation JSON' in out and f'{len(g)} instances' in out and 'anet avg 0.3:0.7' in out
