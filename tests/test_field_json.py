"""The field's annotation JSON as evaluation ground truth: the real THUMOS14 file read as it is
(instances past their video's end kept), the same ActivityNet-style APs as the kit's folder, the
test-video protocols, and a dataset whose classes are not THUMOS14's (classes by name)."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest

import classes
import evaluate
import thumos14
from fig import diagnose

PAST_END = {'video_test_0000270': 22, 'video_test_0000814': 3, 'video_test_0001081': 1,
            'video_validation_0000364': 2, 'video_validation_0000856': 2}


@pytest.fixture(scope='module')
def field_json(shared):
    return shared / 'field' / 'thumos14.json'


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', thumos14.EvalWarning)
        return fn(*args, **kwargs)


def test_the_real_file_is_read_as_it_is(field_json):
    db = thumos14.read_annotation_json(field_json)
    raw = json.loads(field_json.read_text())['database']
    inst, videos = db['instances'], db['videos']
    test = set(videos.loc[videos['subset'] == 'Test', 'video'])
    assert len(test) == 212 and int(inst['video'].isin(test).sum()) == 3358
    # Every segment exactly as in the file, in file order.
    segments = [a['segment'] for v in raw.values() for a in v['annotations']]
    assert inst[['start', 'end']].to_numpy().tolist() == segments
    past = inst[inst['past_end']]
    assert past['video'].value_counts().to_dict() == PAST_END
    duration = inst['video'].map(videos.set_index('video')['duration'])
    assert np.array_equal(inst['end_in_video'], np.minimum(inst['end'], duration))
    assert (past['end'] > duration[past.index]).all() and (past['start'] >= duration[past.index]).sum() > 0
    assert db['classes'] == thumos14.THUMOS14_CLASSES


def kit_detections(gt, rng):
    """Detections around every instance of the kit's ground truth (noisy bounds, some of the wrong
    class) and random false positives, over every video with an instance."""
    table, ids = gt['gt'], np.asarray(gt['class_ids'])
    pick = rng.integers(len(table), size=3 * len(table))
    length = (table['end'] - table['start']).to_numpy()[pick]
    cls = table['cls'].to_numpy()[pick]
    cls = np.where(rng.random(len(pick)) < 0.1, rng.integers(len(ids), size=len(pick)), cls)
    near = pd.DataFrame({'video': table['video'].to_numpy()[pick],
                         'start': table['start'].to_numpy()[pick] + rng.normal(0, 0.3, len(pick)) * length,
                         'end': table['end'].to_numpy()[pick] + rng.normal(0, 0.3, len(pick)) * length,
                         'class_id': ids[cls], 'score': rng.random(len(pick)).round(3)})
    videos = pd.unique(table['video'])
    start = rng.uniform(0, 400, 5000)
    false = pd.DataFrame({'video': rng.choice(videos, 5000), 'start': start, 'end': start + rng.uniform(1, 20, 5000),
                          'class_id': rng.choice(ids, 5000), 'score': rng.random(5000).round(3)})
    return pd.concat([near, false], ignore_index=True)


def test_activitynet_aps_equal_those_of_the_kit_folder(shared, field_json):
    kit_gt = evaluate.read_ground_truth(shared / 'eval_annotation')
    det = kit_detections(kit_gt, np.random.default_rng(7))
    assert det['video'].nunique() == 212
    with pytest.warns(thumos14.EvalWarning, match='26 instances reach past'):
        from_json = evaluate.evaluate(det, field_json, metrics=('anet',))['anet']
    from_kit = evaluate.evaluate(det, shared / 'eval_annotation', metrics=('anet',))['anet']
    assert from_json['class_ids'] == from_kit['class_ids'] == thumos14.CLASS_IDS
    assert from_json['per_class'] == from_kit['per_class'] and from_json['map'] == from_kit['map']
    assert 0.1 < from_json['map'][4] < 0.9
    assert from_json['num_gt_instances'] == from_kit['num_gt_instances']
    # Under each protocol, too; a detection on video_test_0001292 (only Ambiguous intervals in the
    # kit's files, not in the JSON) is a false positive for actionformer, dropped by the others.
    det = pd.concat([det, det.iloc[:50].assign(video='video_test_0001292', score=0.99)], ignore_index=True)
    for protocol in ('actionformer', 'opentad', 'release'):
        a = quiet(evaluate.evaluate_anet, det, field_json, protocol=protocol)
        b = evaluate.evaluate_anet(det, shared / 'eval_annotation', protocol=protocol)
        assert a['per_class'] == b['per_class'] and a['map'] == b['map']
        assert a['num_left_out_detections'] == b['num_left_out_detections'] == \
            det['video'].isin(evaluate.PROTOCOLS[protocol][1]).sum()
    # The 50 high-scored false positives on video_test_0001292 lower the actionformer mAP.
    assert quiet(evaluate.evaluate_anet, det, field_json)['map'][4] < from_json['map'][4]


@pytest.mark.parametrize('protocol, videos, left_out', [
    ('actionformer', 212, ()), ('opentad', 211, ('video_test_0000270',)),
    ('release', 210, ('video_test_0000270', 'video_test_0001496'))])
def test_protocols(shared, field_json, protocol, videos, left_out):
    for source in (field_json, shared / 'eval_annotation'):
        gt = quiet(evaluate.read_ground_truth, source, protocol=protocol)
        assert len(gt['protocol_videos']) == videos and len(gt['gt']['video'].unique()) == videos
        every = quiet(evaluate.read_ground_truth, source, protocol='actionformer')['gt']
        assert len(gt['gt']) == 3358 - int(every['video'].isin(left_out).sum())
        assert set(left_out) <= set(gt['left_out_videos']) and not gt['gt']['video'].isin(left_out).any()
        assert evaluate.describe_protocol(gt).startswith(f'protocol {protocol} (')
        assert f'{videos} videos, {len(gt["gt"])} instances' in evaluate.describe_protocol(gt)
    # Defaults: the kit's folder as it always was (every video, 1292 with only Ambiguous intervals too).
    assert len(evaluate.read_ground_truth(shared / 'eval_annotation')['protocol_videos']) == 213
    assert len(quiet(evaluate.read_ground_truth, field_json)['protocol_videos']) == 212


def test_a_video_list_is_a_protocol(shared, field_json, tmp_path, capsys):
    release = quiet(evaluate.read_ground_truth, field_json, protocol='release')
    listed = tmp_path / 'videos.txt'
    listed.write_text(''.join(f'{v}.mp4\n' for v in release['protocol_videos']) + '\n')
    gt = quiet(evaluate.read_ground_truth, field_json, protocol=str(listed))
    assert len(gt['protocol_videos']) == 210 and gt['gt'].equals(release['gt'])
    det = kit_detections(release, np.random.default_rng(1))
    det = pd.concat([det, det.assign(video='video_test_0000270')], ignore_index=True)
    by_list = quiet(evaluate.evaluate_anet, det, field_json, protocol=str(listed))
    by_name = quiet(evaluate.evaluate_anet, det, field_json, protocol='release')
    assert by_list['per_class'] == by_name['per_class'] and by_list['num_left_out_detections'] == len(det) // 2
    path = tmp_path / 'r.txt'
    thumos14.write_results(path, det)
    quiet(evaluate.main, [str(path), '--gt', str(field_json), '--protocol', str(listed), '--summary'])
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (f'protocol {listed} (the videos listed in the file): 210 videos, 3311 instances; '
                      f'{len(det) // 2} detections on the videos it leaves out dropped')
    (tmp_path / 'empty.txt').write_text('\n')
    with pytest.raises(ValueError, match='empty.txt: protocol video list: no video'):
        evaluate.read_ground_truth(field_json, protocol=str(tmp_path / 'empty.txt'))
    with pytest.raises(ValueError, match="protocol 'opentadd' is neither one of all, actionformer"):
        evaluate.read_ground_truth(field_json, protocol='opentadd')


# --- a dataset whose classes are not THUMOS14's ---

def write_json(path, database):
    path.write_text(json.dumps({'version': 'toy', 'database': database}))
    return path


def toy_database():
    """Three classes numbered jump 2, run 0, swim 1 by label_id: class order run, swim, jump."""
    def anno(label, s, e):
        return {'label': label, 'segment': [s, e], 'label_id': {'run': 0, 'swim': 1, 'jump': 2}[label]}
    return {'a': {'subset': 'Test', 'duration': 100.0, 'fps': 25.0,
                  'annotations': [anno('jump', 10, 20), anno('run', 30, 40), anno('jump', 95, 104)]},
            'b': {'subset': 'Test', 'duration': 50.0, 'fps': 25.0,
                  'annotations': [anno('swim', 0, 10), anno('run', 20, 30)]},
            'c': {'subset': 'Validation', 'duration': 50.0, 'fps': 25.0, 'annotations': [anno('swim', 5, 9)]}}


def test_classes_by_name(tmp_path):
    path = write_json(tmp_path / 'toy.json', toy_database())
    with pytest.raises(ValueError, match="field label 'jump' is not a class of the dataset"):
        thumos14.read_annotation_json(path)   # the training side's default: THUMOS14's classes
    db = thumos14.read_annotation_json(path, class_list=None)
    assert db['classes'] == classes.ClassList(('run', 'swim', 'jump'), (1, 2, 3))
    assert db['instances']['class_id'].tolist() == [3, 1, 3, 2, 1, 2]
    assert db['instances']['past_end'].tolist() == [False, False, True, False, False, False]
    gt = evaluate.read_ground_truth(path)
    assert gt['class_names'] == ['run', 'swim', 'jump'] and gt['class_ids'].tolist() == [1, 2, 3]
    # run: both found; swim: missed; jump: one of two (the one past the end is kept as in the file).
    result = tmp_path / 'result.txt'
    result.write_text('a 30 40 1 0.9\nb 20 30 1 0.8\nb 30 40 2 0.7\na 10 20 3 0.6\n')
    with pytest.warns(thumos14.EvalWarning, match='1 instances reach past'):
        res = evaluate.evaluate(result, path, [0.5], metrics=tuple(evaluate.EVALUATORS))
    assert res['anet']['per_class'] == {1: [1.0], 2: [0.0], 3: [0.5]}
    table = evaluate.format_table(res['anet']).splitlines()
    assert [line.split()[:3] for line in table[3:6]] == [['run', '1', '100.00'], ['swim', '2', '0.00'],
                                                        ['jump', '3', '50.00']]
    # A class list beside the result, in another order: ids are translated by name.
    classes.write_class_list(classes.path_beside(result), classes.ClassList(('jump', 'run', 'swim', 'dive'),
                                                                             (1, 2, 3, 4)))
    result.write_text('a 30 40 2 0.9\nb 20 30 2 0.8\nb 30 40 3 0.7\na 10 20 1 0.6\na 0 5 4 0.9\n')
    with pytest.warns(thumos14.EvalWarning, match='dive'):
        again = evaluate.evaluate(result, path, [0.5], metrics=('anet',))['anet']
    assert again['per_class'] == res['anet']['per_class'] and again['num_unknown'] == 1
    result.write_text('a 30 40 7 0.9\n')
    with pytest.raises(ValueError, match='class id 7, which its class list'):
        evaluate.evaluate(result, path, [0.5])


def test_diagnosis_of_another_dataset(tmp_path):
    path = write_json(tmp_path / 'toy.json', toy_database())
    result = tmp_path / 'result.txt'
    result.write_text('a 30 40 1 0.9\nb 20 30 1 0.8\nb 30 40 2 0.7\na 10 20 3 0.6\na 60 70 2 0.5\n')
    out = tmp_path / 'report.html'
    diag = quiet(diagnose.write_report, result, str(path), out, 0.5)
    page = out.read_text()
    assert all(f'{name}</td><td>{cid}</td>' in page for name, cid in (('run', 1), ('swim', 2), ('jump', 3)))
    assert 'anet AP@0.5' in page and 'kit AP@0.5' in page
    assert diag['evals']['anet']['per_class'][1] == [1.0] * 7
    assert diag['labels']['npos'].tolist() == [2, 1, 2]


def test_reader_refusals_name_file_video_and_field(tmp_path):
    cases = [([{'label': 'run', 'segment': ['x', 2]}], 'field segment is not two numbers'),
             ([{'label': 'run', 'segment': [-1, 2]}], 'field segment starts before the video'),
             ([{'label': 'run', 'segment': [5, 5]}], 'field segment ends at or before its start'),
             ([{'label': 'run', 'segment': [1, 2], 'label_id': 0}, {'label': 'swim', 'segment': [3, 4], 'label_id': 0}],
              'field label_id'),
             ([{'label': 'run', 'segment': [1, 2], 'label_id': 0}, {'label': 'run', 'segment': [3, 4], 'label_id': 1}],
              'field label_id')]
    for annotations, message in cases:
        path = write_json(tmp_path / 'bad.json', {'v': {'subset': 'Test', 'duration': 10.0, 'fps': 30.0,
                                                       'annotations': annotations}})
        with pytest.raises(ValueError) as err:
            thumos14.read_annotation_json(path, class_list=None)
        assert f'{path}: video v: annotation ' in str(err.value) and message in str(err.value)
    # THUMOS14's numbering is still checked against the name.
    path = write_json(tmp_path / 'th.json', {'v': {'subset': 'Test', 'duration': 10.0, 'fps': 30.0, 'annotations': [
        {'label': 'HighJump', 'segment': [1, 2], 'label_id': 3}]}})
    with pytest.raises(ValueError, match='field label_id 3 does not match the label'):
        thumos14.read_annotation_json(path)
    # Past the end (also starting after it) is not refused: flagged.
    path = write_json(tmp_path / 'past.json', {'v': {'subset': 'Test', 'duration': 40.0, 'fps': 30.0, 'annotations': [
        {'label': 'HighJump', 'segment': [38, 45]}, {'label': 'HighJump', 'segment': [41, 42]},
        {'label': 'HighJump', 'segment': [39, 40.5]}]}})
    inst = thumos14.read_annotation_json(path)['instances']
    assert inst['end'].tolist() == [45, 42, 40.5] and inst['end_in_video'].tolist() == [40, 40, 40]
    assert inst['past_end'].tolist() == [True, True, False]   # 40.5 is within one 16-frame clip


def test_class_lists(tmp_path):
    assert classes.from_labels(['b', 'a', 'c', 'a'], [1, 0, 2, 0]) == classes.ClassList(('a', 'b', 'c'), (1, 2, 3))
    assert classes.from_labels(['b', 'a', 'c'], [0, 2, 1]).names == ('b', 'c', 'a')
    # Ids missing or not one per label: name order.
    assert classes.from_labels(['b', 'a'], [0, None]).names == ('a', 'b')
    assert classes.from_labels(['b', 'a', 'b'], [0, 1, 2]).names == ('a', 'b')
    assert classes.from_labels(['b', 'a']).names == ('a', 'b')
    path = tmp_path / 'r.classes.txt'
    assert classes.path_beside(tmp_path / 'r.txt') == str(path)
    listed = classes.ClassList(('Playing guitar', 'run'), (1, 2))
    classes.write_class_list(path, listed)
    assert path.read_text() == '1 Playing guitar\n2 run\n' and classes.read_class_list(path) == listed
    path.write_text('1 run\n2 run\n')
    with pytest.raises(ValueError, match=f'{path}:2: class 2'):
        classes.read_class_list(path)
    path.write_text('one run\n')
    with pytest.raises(ValueError, match=f'{path}:1: expected'):
        classes.read_class_list(path)
