"""Config defaults match the release (docs/method.md), and --key=value overrides are typed and strict."""
import json
import os

import pytest

import config
from config import Config, apply_overrides, parse_config
from fileio import atomic_open
import thumos14


def test_defaults_follow_the_release():
    cfg = Config()
    assert cfg.training_epochs == 31
    assert cfg.learning_rates[:30] == (1e-4,) * 30 and cfg.learning_rates[30] == 1e-5
    assert (cfg.batch_size, cfg.seed, cfg.window_size, cfg.input_steps) == (48, 1129, 512, 128)
    assert (cfg.nms_threshold, cfg.filter_neg_threshold, cfg.filter_conf_threshold) == (0.2, 0.98, 0.1)
    assert cfg.filter_neg_threshold_fuse == 0.99 and cfg.overlap_ratio_threshold == 0.9
    assert len(thumos14.CLASS_REAL) == cfg.num_classes == 21
    assert thumos14.CLASS_NAME_OF_ID[26] == 'Diving' and thumos14.CLASS_INDEX_OF_ID[97] == 20


def test_release_output_paths():
    cfg = Config(mode='spatial', pretrain='KnetV3', method='main_stream')
    assert config.get_models_dir(cfg) == os.path.join('models', 'spatial_KnetV3_main_stream')
    assert config.get_predict_result_path(cfg) == os.path.join('results', 'predict_spatial_KnetV3_main_stream.csv')
    assert config.get_result_path(cfg) == os.path.join('results', 'result_spatial_KnetV3_main_stream.txt')
    assert config.get_fuse_result_path(cfg) == os.path.join('results', 'result_fuse_KnetV3_main_stream.txt')
    assert config.get_log_path(cfg) == os.path.join('logs', 'spatial_KnetV3_main_stream.log')


def test_overrides_are_typed():
    cfg = apply_overrides(Config(), ['--batch_size=8', '--bf16=true', '--learning_rates=1e-3,1e-4',
                                     '--nms_threshold=0.3', '--mode=spatial'])
    assert cfg.batch_size == 8 and cfg.bf16 is True and cfg.mode == 'spatial'
    assert cfg.learning_rates == (1e-3, 1e-4) and cfg.training_epochs == 2
    assert cfg.nms_threshold == 0.3
    cfg = apply_overrides(Config(), ['--device', 'cpu', '--compile', '--batch-size', '16'])
    assert cfg.device == 'cpu' and cfg.compile is True and cfg.batch_size == 16


@pytest.mark.parametrize('arg, words', [
    ('--no_such_key=1', ['unknown config key', 'batch_size', 'seed']),
    ('--batch_size=many', ['batch_size', 'many']),
    ('--bf16=maybe', ['bf16', 'maybe']),
    ('--method=ssd', ['method']),
    ('--num_anchors=16,8', ['num_anchors']),
    ('batch_size=3', ['--key=value']),
    ('--seed', ['--seed=VALUE']),
])
def test_bad_overrides_are_clear_errors(arg, words):
    with pytest.raises(ValueError) as err:
        apply_overrides(Config(), [arg])
    for word in words:
        assert word in str(err.value)


def test_saved_config_round_trips(tmp_path):
    cfg = apply_overrides(Config(), ['--learning_rates=1e-3,1e-5', '--mode=spatial'])
    path = tmp_path / 'config.json'
    with atomic_open(path) as f:
        json.dump(cfg.to_dict(), f)
    back, _ = parse_config(argv=['--config', str(path), '--batch_size=4'])
    assert back.learning_rates == (1e-3, 1e-5) and back.mode == 'spatial' and back.batch_size == 4


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / 'out.txt'
    target.write_text('old')
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write('half')
            raise RuntimeError('interrupted')
    assert target.read_text() == 'old'
    assert os.listdir(tmp_path) == ['out.txt']


def test_atomic_output_has_ordinary_permissions(tmp_path):
    target = tmp_path / 'result.txt'
    with atomic_open(target) as f:
        f.write('x')
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
