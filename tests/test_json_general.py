"""Any dataset in the field's JSON layout (json_dataset.py, method.md §15): the real THUMOS14 file as
distributed, a 7-class dataset at 25 fps and 8 frames a step, times in seconds within one step,
every way features and annotations can disagree on time, and one's own videos' CSV -> JSON."""
import json
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

import classes
import config
import evaluate
import json_dataset
import load_data
import thumos14
from conftest import REPO, SHARED, build_config
from data.make_annotation_json import main as make_annotation_json
from data.make_synthetic import JSON_ANNOTATION, JSON_FEATURES, make_json_synthetic

FIELD_JSON = SHARED / 'field' / 'thumos14.json'
# A narrow network on 32-step windows and one short epoch: minutes on two CPU cores.
QUICK = ['--input_steps=32', '--window_size=128', '--num_anchors=4,2,1', '--base_width=16', '--anchor_width=32',
         '--batch_size=64', '--learning_rates=1e-3', '--device=cpu']


def run_sh(cwd, *args, env_early=False):
    env = {**os.environ, 'PYTHON': sys.executable, 'CUDA_VISIBLE_DEVICES': '', 'EARLY_FUSION': '1' if env_early else '0'}
    return subprocess.run(['bash', str(REPO / 'run.sh'), *args], cwd=cwd, env=env, capture_output=True, text=True)


def clip_steps(frame_num, frames_per_step=4, clip_frames=16):
    """Steps of a clip extraction of a video of frame_num frames (no padding)."""
    return max(1, (frame_num - clip_frames) // frames_per_step + 1)


# --- (a) the field's THUMOS14 file, as it is distributed ---

@pytest.mark.skipif(not FIELD_JSON.is_file(), reason='needs ../shared/thumos14/field/thumos14.json')
def test_the_real_thumos14_json_runs_end_to_end(tmp_path):
    """Per-video features whose lengths follow each video's duration, fps and the 16-frame clips of
    4 frames; run.sh trains, tests, fuses and evaluates without a refusal, warns once per training
    read about the instances past their video's end, and scores ActionFormer's 212 videos."""
    videos = json.loads(FIELD_JSON.read_text())['database']
    feat = tmp_path / 'feat'
    feat.mkdir()
    rng = np.random.default_rng(0)
    for video, entry in videos.items():
        steps = clip_steps(round(entry['duration'] * entry['fps']))
        np.save(feat / f'{video}.npy', rng.standard_normal((steps, 16), dtype=np.float32))
    data = ['--data_source=json', f'--annotation_json={FIELD_JSON}', f'--feature_dir={feat}',
            '--spatial_channels=0,8', '--temporal_channels=8,16']
    proc = run_sh(tmp_path, 'train_test_fuse', 'I3D', 'main_stream', *data, *QUICK)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert not [line for line in (out + proc.stderr).splitlines() if line.startswith('error')]
    past_end = [line for line in out.splitlines() if 'reach past their video' in line]
    assert len(past_end) == 2   # one per stream's training read; none from testing
    assert ('field segment: 4 training instances reach past their video\'s duration: 0 clipped to the end, '
            '4 dropped') in past_end[0]
    assert 'video_validation_0000364 (2), video_validation_0000856 (2)' in past_end[0]
    assert 'protocol actionformer (every test video, as ActionFormer, TriDet and TemporalMaxer evaluate): ' \
           '212 videos, 3358 instances' in out
    fused = tmp_path / 'results' / 'result_fuse_I3D_main_stream.txt'
    assert fused.stat().st_size > 0
    # The ActivityNet-style APs of these detections against the JSON are those against the kit's folder.
    with pytest.warns(thumos14.EvalWarning):
        from_json = evaluate.evaluate(str(fused), FIELD_JSON, metrics=('anet',))['anet']
    from_kit = evaluate.evaluate(str(fused), SHARED / 'eval_annotation', metrics=('anet',),
                                 protocol='actionformer')['anet']
    assert np.allclose(from_json['map'], from_kit['map'], atol=1e-12, rtol=0)


# --- (b) seven classes of the test's names, 25 fps, 8 frames a step ---

CLASSES = ('pour', 'stir', 'chop', 'peel', 'fry', 'wash', 'plate')


@pytest.fixture(scope='module')
def kitchen(tmp_path_factory):
    root = tmp_path_factory.mktemp('kitchen')
    info = make_json_synthetic(str(root), seed=1, class_names=CLASSES, fps=25.0, frames_per_step=8, clip_frames=16,
                               dim=16, num_videos=24)
    data = ['--data_source=json', f'--annotation_json={root / JSON_ANNOTATION}',
            f'--feature_dir={root / JSON_FEATURES}',
            '--spatial_channels=0,16', '--temporal_channels=16,32', '--frames_per_step=8', '--clip_frames=16',
            '--train_subsets=training', '--test_subsets=testing']
    return root, info, data


def test_seven_classes_at_25_fps_and_8_frames_a_step_run_end_to_end(kitchen, tmp_path):
    root, info, data = kitchen
    db = json.loads((root / JSON_ANNOTATION).read_text())['database']
    assert info['classes'] == list(CLASSES) and {v['fps'] for v in db.values()} == {25.0}
    for video, entry in db.items():   # 16-frame clips every 8 frames
        assert len(np.load(root / JSON_FEATURES / f'{video}.npy')) == clip_steps(round(entry['duration'] * 25), 8)
    proc = run_sh(tmp_path, 'train_test_fuse', 'K', 'decouple_ssad', *data, '--base_width=32', '--anchor_width=64',
                  '--batch_size=16', '--learning_rates=' + ','.join(['3e-3'] * 8 + ['3e-4'] * 2), '--device=cpu')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    test_videos = [v for v, e in db.items() if e['subset'] == 'testing']
    instances = sum(len(db[v]['annotations']) for v in test_videos)
    assert f'{len(test_videos)} videos, {instances} instances' in proc.stdout and 'two-stream fusion' in proc.stdout
    # The instances at their known times are found there, in seconds: a time scale off by the
    # step (4 frames taken for 8) would put every detection at half its time.
    det = thumos14.read_results(tmp_path / 'results' / 'result_fuse_K_decouple_ssad.txt')
    found = []
    for video in test_videos:
        mine = det[det['video'] == video]
        for a in db[video]['annotations']:
            start, end = a['segment']
            iou = (np.minimum(mine['end'], end) - np.maximum(mine['start'], start)).clip(0) / (
                np.maximum(mine['end'], end) - np.minimum(mine['start'], start))
            found.append(float(iou.to_numpy().max(initial=0)))
    assert np.mean(np.array(found) >= 0.5) > 0.75, found
    assert det['end'].max() <= max(e['duration'] for e in db.values()) + 8 / 25
    # The classes are the test's, by name: the class list beside the result, the results JSON,
    # and the per-class APs of the evaluation.
    result = tmp_path / 'results' / 'result_fuse_K_decouple_ssad.txt'
    assert classes.read_class_list(classes.path_beside(result)).names == CLASSES
    named = json.loads(pathlib.Path(config.get_results_json_path(result)).read_text())['results']
    assert set(named) <= set(test_videos) and {d['label'] for dets in named.values() for d in dets} == set(CLASSES)
    scores = evaluate.evaluate(str(result), root / JSON_ANNOTATION, subset='testing', metrics=('anet',))['anet']
    assert list(scores['class_names']) == list(CLASSES) and scores['map'][4] > 0.2   # tIoU 0.5; chance is near 0


def test_features_of_one_stream_train_test_and_evaluate_that_stream_alone(kitchen, tmp_path):
    """One RGB backbone (--streams=spatial): run.sh trains and tests the spatial stream, fuses
    nothing, and evaluates and summarises that stream."""
    root, _, data = kitchen
    one = [d for d in data if not d.startswith(('--spatial_channels', '--temporal_channels'))]
    proc = run_sh(tmp_path, 'train_test_fuse', 'K', 'main_stream', *one, '--streams=spatial',
                  '--spatial_channels=0,32', '--base_width=16', '--anchor_width=32', '--batch_size=16',
                  '--learning_rates=3e-3,3e-3', '--device=cpu')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = sorted(os.listdir(tmp_path / 'results'))
    assert 'result_spatial_K_main_stream.txt' in results and 'eval_spatial_K_main_stream.json' in results
    assert not [r for r in results if 'temporal' in r or 'fuse' in r], results
    assert 'one stream (spatial), nothing to fuse' in proc.stdout and 'temporal stream' not in proc.stdout
    summary = proc.stdout[proc.stdout.index('summary, RGB only (spatial)'):]
    # seven classes of the test's own: the ActivityNet-style metric, not THUMOS14's kit
    assert 'ActivityNet-style metric' in summary and 'official THUMOS14 kit metric' not in summary
    bad = run_sh(tmp_path, 'train', 'K', 'main_stream', *one, '--streams=spatial', '--spatial_channels=0,32',
                 env_early=True)
    assert bad.returncode == 2 and 'EARLY_FUSION=1 needs two streams' in bad.stderr


@pytest.mark.parametrize('fps, frames_per_step, clip_frames', [(25.0, 8, 16), (30.0, 4, 16), (29.97, 16, 16),
                                                               (24.0, 8, 32), (25.0, 4, 4)])
def test_a_planted_instance_is_at_its_time_within_one_step(tmp_path, fps, frames_per_step, clip_frames):
    """Features lit on the steps whose clips are centred inside an instance, read through the
    windows of the config and mapped to seconds as test.py and the post-processing map a box
    (frame = window start + window_size x, seconds = frame / fps), are the instance within one step."""
    start_s, end_s, duration = 17.3, 21.05, 90.0
    steps = clip_steps(round(duration * fps), frames_per_step, clip_frames)
    centre = json_dataset.step_centre_frame(np.arange(steps), frames_per_step, clip_frames) / fps
    a = np.zeros((steps, 2), np.float32)
    a[(centre >= start_s) & (centre < end_s)] = 1.0
    (tmp_path / 'feat').mkdir()
    np.save(tmp_path / 'feat' / 'v.npy', a)
    (tmp_path / 'a.json').write_text(json.dumps({'database': {'v': dict(
        subset='test', duration=duration, fps=fps, annotations=[dict(label='x', segment=[start_s, end_s])])}}))
    cfg = config.apply_overrides(config.Config(), [
        '--data_source=json', f'--annotation_json={tmp_path / "a.json"}', f'--feature_dir={tmp_path / "feat"}',
        '--spatial_channels=0,1', '--temporal_channels=1,2', f'--frames_per_step={frames_per_step}',
        f'--clip_frames={clip_frames}', '--train_subsets=train', '--test_subsets=test', '--mode=spatial'])
    assert cfg.window_size == 128 * frames_per_step and cfg.test_stride == 64 * frames_per_step
    data = load_data.load_test_data(cfg)
    w, j = np.nonzero(data['features'][..., 0] > 0)
    cell = cfg.window_size / cfg.input_steps
    lo = (data['starts'][w] + cell * j).min() / fps
    hi = (data['starts'][w] + cell * (j + 1)).max() / fps
    step_s = frames_per_step / fps
    assert abs(lo - start_s) <= step_s and abs(hi - end_s) <= step_s, (lo, hi)


# --- (c) features and annotations that disagree on time ---

def small_dataset(root, database, steps=None, frames_per_step=4, clip_frames=16, dim=4):
    (root / 'feat').mkdir(exist_ok=True)
    for video, entry in database.items():
        n = clip_steps(round(entry['duration'] * entry['fps']), frames_per_step, clip_frames)
        count = (steps or {}).get(video, n)
        if count is not None:
            np.save(root / 'feat' / f'{video}.npy', np.zeros((count, 2 * dim), np.float32))
    (root / 'a.json').write_text(json.dumps({'database': database}))
    return build_config(data_source='json', annotation_json=str(root / 'a.json'), feature_dir=str(root / 'feat'),
                        spatial_channels=(0, dim), temporal_channels=(dim, 2 * dim), frames_per_step=frames_per_step,
                        clip_frames=clip_frames, window_size=128 * frames_per_step,
                        train_stride=32 * frames_per_step, test_stride=64 * frames_per_step)


def entry(subset='Validation', duration=60.0, fps=30.0, segments=((5.0, 9.0),), label='HighJump'):
    return dict(subset=subset, duration=duration, fps=fps,
                annotations=[dict(label=label, segment=list(s)) for s in segments])


def one_line_error(fn, *words):
    with pytest.raises(ValueError) as err:
        fn()
    message = str(err.value)
    assert '\n' not in message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize('case, steps, words', [
    ('stride 8 read as 4', lambda n: (n - 16) // 8 + 1, ('frames_per_step', 'field fps 30', 'field duration 60')),
    ('25 fps read as 30', lambda n: (n * 25 // 30 - 16) // 4 + 1, ('fps', '25.00 fps')),
    ('30 fps read as 25', lambda n: (n * 30 // 25 - 16) // 4 + 1, ('fps',)),
    ('truncated extraction', lambda n: n // 4 * 3 // 4, ('truncated',)),
    ('extracted twice as long', lambda n: 2 * ((n - 16) // 4 + 1), ('steps',)),
])
def test_a_feature_file_of_another_time_scale_is_refused(tmp_path, case, steps, words):
    cfg = small_dataset(tmp_path, {'v1': entry()}, {'v1': steps(1800)})
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'v1.npy', 'video v1', *words)


def test_lengths_within_a_clip_are_read(tmp_path):
    """Extractors that pad the last clip, or drop a partial one, are within one clip and a step."""
    for count in (clip_steps(1800) - 1, clip_steps(1800), 1800 // 4, -(-1800 // 4) + 1):
        cfg = small_dataset(tmp_path, {'v1': entry()}, {'v1': count})
        assert json_dataset.read_split(cfg, 'val')[1]['steps'].tolist() == [count]
    cfg = small_dataset(tmp_path, {'v1': entry()}, {'v1': clip_steps(1800) + 6})
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'v1', 'do not fit')


def test_other_steps_and_clips_are_checked_with_their_own_convention(tmp_path):
    db = {'v1': entry(fps=25.0, duration=100.0)}
    cfg = small_dataset(tmp_path, db, frames_per_step=16, clip_frames=32)
    assert json_dataset.read_split(cfg, 'val')[1]['steps'].tolist() == [(2500 - 32) // 16 + 1]
    cfg.frames_per_step = 8   # the same file said to be 8 frames a step: twice the steps it has
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'video v1', 'frames_per_step')


def test_a_video_listed_twice_or_a_field_given_twice_is_refused(tmp_path):
    cfg = small_dataset(tmp_path, {'v1': entry(), 'v2': entry()})
    text = (tmp_path / 'a.json').read_text()
    first = json.dumps(entry(duration=30.0))
    (tmp_path / 'a.json').write_text(text.replace('"v2":', f'"v1": {first}, "v2":'))
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'video v1', 'listed more than once', 'database')
    (tmp_path / 'a.json').write_text(text.replace('"fps": 30.0', '"fps": 25.0, "fps": 30.0', 1))
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'video v1', 'field fps', 'more than once')
    (tmp_path / 'a.json').write_text(text.replace('"segment"', '"segment": [1, 2], "segment"', 1))
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'video v1: annotation 0', 'field segment')


def test_frame_rates_durations_and_label_ids_that_do_not_hold_are_refused(tmp_path):
    ok = entry()
    for bad, field in ((dict(ok, fps=0), 'field fps'), (dict(ok, fps='thirty'), 'field fps'),
                       ({k: v for k, v in ok.items() if k != 'fps'}, "'fps'"), (dict(ok, fps=None), 'field fps'),
                       (dict(ok, duration=0), 'field duration'), ({k: v for k, v in ok.items() if k != 'duration'},
                                                                  "'duration'")):
        (tmp_path / 'a.json').write_text(json.dumps({'database': {'v1': bad}}))
        cfg = small_dataset(tmp_path, {'v1': ok})
        (tmp_path / 'a.json').write_text(json.dumps({'database': {'v1': bad}}))
        one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'video v1', field)
    # label_ids that disagree: one label with two ids, or two labels with one id
    anns = [dict(label='cut', segment=[1, 2], label_id=0), dict(label='cut', segment=[3, 4], label_id=1)]
    cfg = small_dataset(tmp_path, {'v1': dict(ok, annotations=anns)})
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'video v1', 'label_id')
    anns = [dict(label='cut', segment=[1, 2], label_id=0), dict(label='peel', segment=[3, 4], label_id=0)]
    cfg = small_dataset(tmp_path, {'v1': dict(ok, annotations=anns)})
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'video v1', 'label_id')


def test_instances_past_the_end_are_clipped_or_dropped_with_one_warning(tmp_path):
    db = {'v1': entry(segments=((5.0, 9.0), (58.0, 63.0), (61.0, 64.0), (70.0, 72.0))), 'v2': entry(),
          'v3': entry(segments=((59.5, 62.0),)), 'v4': entry(duration=30.0, segments=((10.0, 30.3),))}
    cfg = small_dataset(tmp_path, db)
    with pytest.warns(thumos14.InputWarning) as caught:
        anno, _ = json_dataset.read_split(cfg, 'val')
    assert len(caught) == 1
    message = str(caught[0].message)
    assert ('field segment: 4 training instances reach past their video\'s duration: 2 clipped to the end, 2 dropped'
            in message) and 'v1 (3), v3 (1)' in message and 'v4' not in message   # 0.3 s: within a clip
    rows = anno.groupby('video')[['startFrame', 'endFrame']].apply(lambda g: g.to_numpy().tolist()).to_dict()
    assert rows['v1'] == [[150, 270], [1740, 1800]] and rows['v3'] == [[1785, 1800]] and rows['v4'] == [[300, 900]]
    # The test split's instances are not read for windows: no warning there; evaluation keeps them all.
    db = {k: dict(v, subset='Test') for k, v in db.items()}
    cfg = small_dataset(tmp_path, db)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        json_dataset.read_split(cfg, 'test')
    gt = evaluate.read_json_ground_truth(str(tmp_path / 'a.json'))['gt']
    assert len(gt) == 7


def test_missing_feature_files_unknown_subsets_and_streams(tmp_path):
    db = {'v1': entry(), 'v2': entry(), 'v3': entry(subset='Test')}
    cfg = small_dataset(tmp_path, db, {'v2': None})
    with pytest.warns(thumos14.InputWarning, match=r'no feature file for 1 of the 2 Validation videos.*: v2'):
        assert json_dataset.read_split(cfg, 'val')[1]['video'].tolist() == ['v1']
    cfg.train_subsets = ('training',)
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), "no video of subset 'training' (train_subsets)",
                   "'Validation' (2 videos, e.g. v1)", "'Test' (1 videos, e.g. v3)")
    cfg = small_dataset(tmp_path, db)
    cfg.streams = ('spatial',)
    one_line_error(lambda: json_dataset.load_features(cfg, 'val', [0], ['v1'], 'temporal'), 'no temporal stream')
    one_line_error(lambda: json_dataset.read_split(cfg, 'val'), 'v1.npy', 'feature shape', 'spatial_channels')


def test_detect_refuses_features_of_another_step(tmp_path):
    cfg = build_config(data_source='json', frames_per_step=8, window_size=1024)
    one_line_error(lambda: load_data.load_video_data(cfg, 'v', 1000, str(tmp_path)), '4 frames a step',
                   'frames_per_step')


def test_config_names_and_checks():
    cfg = config.apply_overrides(config.Config(), ['--data_source=json'])
    assert config.get_eval_gt_path(cfg) == cfg.annotation_json == cfg.fps_file
    assert config.get_eval_subset(cfg) == 'Test' and (cfg.frames_per_step, cfg.clip_frames) == (4, 16)
    old = config.apply_overrides(config.Config(), ['--data_source=i3d'])
    assert config.reads_json(old) and config.get_eval_gt_path(old) == cfg.annotation_json
    assert (config.Config().window_size, config.Config().train_stride, config.Config().test_stride) == (512, 128, 256)
    for bad, field in (('--frames_per_step=0', 'frames_per_step'), ('--streams=rgb', 'streams'),
                       ('--test_subsets=Validation', 'share'), ('--train_subsets=', 'train_subsets')):
        with pytest.raises(ValueError, match=field):
            config.apply_overrides(config.Config(), ['--data_source=json', bad])
    with pytest.raises(ValueError, match='for data_source=json'):
        config.apply_overrides(config.Config(), ['--frames_per_step=8'])
    single = config.apply_overrides(config.Config(), ['--data_source=json', '--streams=spatial',
                                                      '--spatial_channels=0,1024', '--temporal_channels=0,1024'])
    assert json_dataset.feature_width(single) == 1024


# --- (d) one's own videos: CSV -> JSON ---

def write(path, text):
    path.write_text(text)
    return str(path)


def test_own_annotations_csv_becomes_the_json(tmp_path, capsys):
    info = write(tmp_path / 'video_info.csv', 'video,fps,frame_num,steps\n'
                 'kitchen_1,30.0,1800,447\nkitchen_2,25.0,2500,622\nkitchen_3,30.0,900,222\nkitchen_4,29.97,3000,747\n')
    csv = write(tmp_path / 'a.csv', 'video,label,start_s,end_s\nkitchen_1,pour,1.5,4\nkitchen_1,stir,10,20.25\n'
                'kitchen_2,stir,3,9\nkitchen_3,,,\nkitchen_4,pour,50,60\n')
    out = tmp_path / 'own.json'
    make_annotation_json([csv, '--video_info', info, '--test_fraction', '0.25', '--seed', '1', '--out', str(out)])
    assert 'wrote' in capsys.readouterr().out
    db = json.loads(out.read_text())['database']
    assert list(db) == ['kitchen_1', 'kitchen_2', 'kitchen_3', 'kitchen_4']
    assert [d['subset'] for d in db.values()].count('testing') == 1
    assert db['kitchen_2']['duration'] == 100.0 and db['kitchen_2']['fps'] == 25.0
    assert db['kitchen_3']['annotations'] == []
    assert db['kitchen_1']['annotations'][1] == dict(label='stir', segment=[10.0, 20.25], label_id=1)
    read = thumos14.read_annotation_json(str(out), class_list=None)
    assert read['classes'].names == ('pour', 'stir') and len(read['instances']) == 4
    listed = write(tmp_path / 'test.txt', 'kitchen_2\nkitchen_4\n')
    make_annotation_json([csv, '--video_info', info, '--test_videos', listed, '--out', str(out)])
    assert [v for v, d in json.loads(out.read_text())['database'].items() if d['subset'] == 'testing'] == \
        ['kitchen_2', 'kitchen_4']
    # ... and the data source reads it: the features of each video at its own fps.
    feat = tmp_path / 'feat'
    feat.mkdir()
    for video, frames in (('kitchen_1', 1800), ('kitchen_2', 2500), ('kitchen_3', 900), ('kitchen_4', 3000)):
        np.save(feat / f'{video}.npy', np.zeros((clip_steps(frames), 8), np.float32))
    cfg = build_config(data_source='json', annotation_json=str(out), feature_dir=str(feat), spatial_channels=(0, 8),
                       streams=('spatial',), mode='spatial', train_subsets=('training',), test_subsets=('testing',))
    anno, videos = json_dataset.read_split(cfg, 'val')
    assert videos['video'].tolist() == ['kitchen_1', 'kitchen_3'] and anno['startFrame'].tolist() == [45, 300]


@pytest.mark.parametrize('row, line, words', [
    ('kitchen_9,pour,1,2', 3, 'not in the video info table'),
    ('kitchen_1,pour,one,2', 3, 'must be numbers'),
    ('kitchen_1,pour,-1,2', 3, 'negative'),
    ('kitchen_1,pour,5,5', 3, 'at or before'),
    ('kitchen_1,pour,50,61', 3, 'past the video\'s end'),
    ('kitchen_1,,1,2', 3, 'empty label'),
])
def test_own_annotations_bad_rows_are_refused_naming_the_line(tmp_path, row, line, words):
    info = write(tmp_path / 'video_info.csv', 'video,fps,frame_num,steps\nkitchen_1,30.0,1800,447\n'
                 'kitchen_2,30.0,1800,447\n')
    csv = write(tmp_path / 'a.csv', f'video,label,start_s,end_s\nkitchen_2,pour,1,2\n{row}\n')
    with pytest.raises(SystemExit) as err:
        make_annotation_json([csv, '--video_info', info, '--test_fraction', '0.5', '--out', str(tmp_path / 'o.json')])
    assert f'a.csv:{line}: ' in str(err.value) and words in str(err.value)
    assert not (tmp_path / 'o.json').exists()
