"""Classes from the data: a toy dataset of five classes in the JSON layout trains, tests, fuses
and evaluates under its own class names; checkpoints, predictions and streams of another class
set are refused in one line; THUMOS14's classes keep their ids and the CliffDiving -> Diving
repeat, which no other class list gets."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import checkpoints
import classes
import config
import evaluate
import fuse
import load_data
import postprocess
import predictions
import test as T
import thumos14
import train
from conftest import NARROW, TINY

NAMES = ('pour', 'stir', 'chop', 'whisk', 'plate')   # label_id 0..4 in this order
DIM = 8   # channels per stream


def toy_video(subset, rng, first, seconds=40.0, fps=30.0):
    """Four instances, of the classes first, first + 1, ... (mod 5)."""
    starts = np.sort(rng.uniform(0, seconds - 6, 4)).round(2)
    ends = (starts + rng.uniform(1.5, 4, 4)).round(2)
    annotations = [dict(label=NAMES[(first + j) % len(NAMES)], label_id=(first + j) % len(NAMES), segment=[s, e])
                   for j, (s, e) in enumerate(zip(starts.tolist(), ends.tolist()))]
    return dict(subset=subset, duration=seconds, fps=fps, annotations=annotations)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    """anno.json (three Validation and two Test videos, five classes) and feat/<video>.npy, where
    each instance's steps carry its class's signature in both streams."""
    root = tmp_path_factory.mktemp('toy')
    rng = np.random.default_rng(5)
    database = {f'video_validation_{i}': toy_video('Validation', rng, i) for i in range(3)}
    database.update({f'video_test_{i}': toy_video('Test', rng, 3 + i) for i in range(2)})
    (root / 'anno.json').write_text(json.dumps({'database': database}))
    (root / 'feat').mkdir()
    signature = rng.normal(0, 1, (len(NAMES), 2 * DIM)).astype(np.float32)
    for video, entry in database.items():
        steps = int((entry['duration'] * entry['fps'] - 16) // 4 + 1)
        features = rng.normal(0, 0.3, (steps, 2 * DIM)).astype(np.float32)
        for a in entry['annotations']:
            lo, hi = (int(t * entry['fps'] / 4) for t in a['segment'])
            features[lo:hi] += signature[a['label_id']]
        np.save(root / 'feat' / f'{video}.npy', features)
    return root


def toy_config(root, mode='temporal', **overrides):
    values = dict(TINY, **NARROW, method='main_stream', pretrain='toy', mode=mode, device='cpu', batch_size=4,
                  learning_rates=(1e-3,), data_source='json', annotation_json=str(root / 'anno.json'),
                  feature_dir=str(root / 'feat'), spatial_channels=(0, DIM),
                  temporal_channels=(DIM, 2 * DIM), models_dir=str(root / 'models'),
                  logs_dir=str(root / 'logs'), results_dir=str(root / 'results'))
    values.update(overrides)
    cfg = config.Config(**values)
    config.check_config(cfg)
    return config.resolve_defaults(cfg)


@pytest.fixture(scope='module')
def trained(toy):
    """Both streams trained for one epoch and tested: {mode: (cfg, train result)}."""
    torch.set_num_threads(2)
    runs = {}
    for mode in ('temporal', 'spatial'):
        cfg = toy_config(toy, mode)
        runs[mode] = (cfg, train.train(cfg, progress=False))
        T.run_test(cfg, log=lambda *a: None)
    return runs


def test_the_class_list_comes_from_the_data(toy):
    cfg = toy_config(toy)
    assert load_data.class_list(cfg) == classes.ClassList(NAMES, (1, 2, 3, 4, 5))   # label_id order
    assert load_data.class_list(config.Config()) == thumos14.THUMOS14_CLASSES      # the release's data
    # A class-list file: its order and ids, and every label of the JSON must be in it.
    listed = classes.ClassList(tuple(sorted(NAMES)) + ('garnish',), (10, 20, 30, 40, 50, 60))
    classes.write_class_list(toy / 'mine.txt', listed)
    assert load_data.class_list(toy_config(toy, class_list=str(toy / 'mine.txt'))) == listed
    classes.write_class_list(toy / 'few.txt', classes.ClassList(('pour', 'stir'), (1, 2)))
    with pytest.raises(ValueError, match='label'):
        load_data.load_train_data(toy_config(toy, class_list=str(toy / 'few.txt')))
    with pytest.raises(ValueError, match='data_source=release holds THUMOS14'):
        load_data.class_list(config.Config(class_list=str(toy / 'mine.txt')))


def test_num_classes_is_derived_not_set():
    with pytest.raises(ValueError, match=r'num_classes: 6 is not a setting.*class_list') as err:
        config.apply_overrides(config.Config(), ['--num_classes=6'])
    assert '\n' not in str(err.value)
    cfg = config.with_classes(config.Config(), classes.ClassList(NAMES, (1, 2, 3, 4, 5)))
    assert cfg.num_classes == 6
    # a saved config.json records it (old ones: 21) and loads as it is
    assert config.config_from_dict(cfg.to_dict()).num_classes == 6
    assert config.config_from_dict(config.Config().to_dict()).num_classes == 21


def test_a_toy_dataset_trains_tests_and_fuses_under_its_names(toy, trained):
    cfg, result = trained['temporal']
    ckpt = checkpoints.read_checkpoint(result['model_path'])
    assert ckpt['classes'] == {'names': list(NAMES), 'ids': [1, 2, 3, 4, 5]}
    assert ckpt['config']['num_classes'] == 6
    saved = json.loads((toy / 'models' / 'temporal_toy_main_stream' / 'config.json').read_text())
    assert saved['num_classes'] == 6

    # predictions: background + 5 scores, their class list beside them
    pred_path = config.get_predict_result_path(cfg)
    pred, pred_classes = predictions.read_predictions_and_classes(pred_path)
    assert predictions.num_scores(pred.columns) == 6 and pred_classes == classes.ClassList(NAMES, (1, 2, 3, 4, 5))
    # result file: the dataset's ids, its class list beside it, and the results JSON of the same detections
    result_path = config.get_result_path(cfg)
    det = thumos14.read_results(result_path)
    assert len(det) and set(det['class_id']) <= {1, 2, 3, 4, 5}
    assert classes.read_class_list(classes.path_beside(result_path)).names == NAMES
    doc = json.loads(open(config.get_results_json_path(result_path)).read())
    labels = [d['label'] for dets in doc['results'].values() for d in dets]
    assert len(labels) == len(det) and set(labels) <= set(NAMES)
    assert sorted(doc['results']) == sorted(set(det['video']))
    first = doc['results'][det['video'][0]]
    assert [d['score'] for d in first] == sorted((d['score'] for d in first), reverse=True)

    # fusion: the same, for the fused result
    out, fused = fuse.fuse(cfg)
    assert len(fused) and set(fused['class_id']) <= {1, 2, 3, 4, 5}
    assert classes.read_class_list(classes.path_beside(out)) == classes.ClassList(NAMES, (1, 2, 3, 4, 5))
    fused_doc = json.loads(open(config.get_results_json_path(out)).read())
    assert {d['label'] for dets in fused_doc['results'].values() for d in dets} <= set(NAMES)

    # re-post-processing the predictions file knows its classes from the list beside it
    again = toy / 'again.txt'
    T.main(['--predictions', pred_path, '--out', str(again)])
    assert again.read_bytes() == open(result_path, 'rb').read()
    assert classes.read_class_list(classes.path_beside(again)).names == NAMES

    # evaluation by class name: the ActivityNet-style metric by default; the kit's is refused
    res = evaluate.main([out, '--gt', str(toy / 'anno.json')])
    assert list(res) == ['anet'] and res['anet']['class_names'] == list(NAMES)
    with pytest.raises(SystemExit, match=r'--metric kit: .*use --metric anet'):
        evaluate.main([out, '--gt', str(toy / 'anno.json'), '--metric', 'kit'])
    assert list(evaluate.main([out, '--gt', str(toy / 'anno.json'), '--metric', 'all'])) == ['anet']


def test_a_checkpoint_of_other_classes_is_refused(toy, trained, make_config, tmp_path):
    # A THUMOS14 checkpoint (no class list recorded) on the toy data
    thumos = make_config(TINY, NARROW, method='main_stream')
    path = tmp_path / 'thumos.pt'
    torch.save({'model': checkpoints.build_model(thumos, DIM).state_dict(), 'method': 'main_stream',
                'feature_dim': DIM, 'config': thumos.to_dict(), 'epoch': 0}, path)
    cfg = toy_config(toy, results_dir=str(tmp_path / 'results'))
    with pytest.raises(ValueError) as err:   # test.py's main() prints it as `error: <message>`
        T.run_test(cfg, checkpoint=str(path), log=lambda *a: None)
    assert not list((tmp_path / 'results').rglob('*'))   # nothing written
    message = str(err.value)
    assert '\n' not in message and 'the data has 5 classes (pour, stir, chop, whisk, plate)' in message
    assert '20 classes (BaseballPitch, BasketballDunk, Billiards, ..., VolleyballSpiking)' in message
    # and the toy checkpoint on THUMOS14's classes
    ckpt = checkpoints.read_checkpoint(trained['temporal'][1]['model_path'])
    with pytest.raises(ValueError, match=r'has 20 classes .* but checkpoint .* has 5 classes \(pour'):
        checkpoints.check_checkpoint(ckpt, 'toy.pt', config.Config(method='main_stream'),
                                     class_list=thumos14.THUMOS14_CLASSES)


def test_fusion_refuses_two_streams_of_other_classes(toy, trained, tmp_path):
    cfg = trained['temporal'][0]
    temporal = config.get_predict_result_path(cfg)
    pred = predictions.read_predictions(temporal)
    # the same table under another class list of five (other names)
    other = tmp_path / 'other.csv'
    predictions.write_predictions(str(other), pred, classes.ClassList(('a', 'b', 'c', 'd', 'e'), (1, 2, 3, 4, 5)))
    with pytest.raises(SystemExit) as err:
        fuse.main(['--temporal', temporal, '--spatial', str(other), '--out', str(tmp_path / 'f.txt')])
    assert '\n' not in str(err.value) and '5 classes (a, b, c, d, e)' in str(err.value)
    assert '5 classes (pour, stir, chop, whisk, plate)' in str(err.value)
    assert not (tmp_path / 'f.txt').exists()


def test_predictions_of_another_width_are_refused(toy, trained, tmp_path):
    pred = predictions.read_predictions(config.get_predict_result_path(trained['temporal'][0]))
    lone = tmp_path / 'lone.csv'   # six score columns and no class list beside it: THUMOS14's 21 expected
    predictions.write_predictions(str(lone), pred, classes.ClassList(NAMES, (1, 2, 3, 4, 5)))
    os.remove(classes.path_beside(str(lone)))
    with pytest.raises(ValueError, match=r"line 1: missing columns \['score_6'.*THUMOS14's 20 classes"):
        predictions.read_predictions(str(lone))
    classes.write_class_list(classes.path_beside(str(lone)), classes.ClassList(('a', 'b'), (1, 2)))
    with pytest.raises(ValueError, match=r'6 score columns .* 2 classes \(a, b\)'):
        predictions.read_predictions(str(lone))
    with pytest.raises(ValueError, match=r'6 score columns, but its classes are 20 classes'):
        postprocess.post_process(pred, trained['temporal'][0], {v: 30.0 for v in pred['video_name'].unique()})
    with pytest.raises(ValueError, match='6 score columns, but its classes are 20 classes'):
        predictions.write_predictions(str(tmp_path / 'x.csv'), pred)


def test_diving_repeats_only_for_thumos14():
    """The same scores under THUMOS14's classes and under THUMOS14's names with ids 1..20: only the
    first repeats each CliffDiving detection as Diving."""
    rng = np.random.default_rng(0)
    n = 50
    scores = rng.dirichlet(np.ones(21), n)
    scores[:, 0] = 0.01
    table = pd.DataFrame({'video_name': ['v'] * n, 'start': 0, 'conf': 1.0,
                          'xmin': np.arange(n) * 100.0, 'xmax': np.arange(n) * 100.0 + 50})
    table = pd.concat([table, pd.DataFrame(scores, columns=predictions.SCORE_COLUMNS)], axis=1)
    cfg = config.Config()
    official = postprocess.post_process(table, cfg, {'v': 30.0})
    renumbered = classes.ClassList(thumos14.THUMOS14_CLASSES.names, tuple(range(1, 21)))
    plain = postprocess.post_process(table, cfg, {'v': 30.0}, class_list=renumbered)
    cliff = thumos14.THUMOS14_CLASSES.names.index('CliffDiving') + 1
    assert (official['class_id'] == thumos14.CLIFF_DIVING).sum() == (plain['class_id'] == cliff).sum() > 0
    assert len(official) > len(plain)   # the Diving repeats
    # every other class: the same detections under the other ids (NMS runs per class)
    back = dict(zip(renumbered.ids, thumos14.THUMOS14_CLASSES.ids))
    key = ['class_id', 'start', 'end', 'score']
    others = official[official['class_id'] != thumos14.DIVING].sort_values(key).reset_index(drop=True)
    mapped = plain.assign(class_id=plain['class_id'].map(back))
    mapped = mapped[mapped['class_id'] != thumos14.DIVING].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(others[key], mapped[key])
