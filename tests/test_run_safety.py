"""Run safety: settings and weights outside their domain, full or read-only disks, runs that
collide or leave debris, and pickles that would allocate gigabytes. Each one must end in one
clear ValueError (or `error: ...` and a non-zero exit), never a wrong result with exit 0."""
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import torch

import checkpoints
import config
import convert_tf_checkpoint as convert
import fileio
import postprocess
import predictions
import safe_pickle
import sliding_windows
import test as T
import thumos14
import train
from conftest import NARROW, REPO, TINY, TINY_RUN, build_config

torch.set_num_threads(2)
DIM = 8


# --- helpers ---------------------------------------------------------------------------------

def make_data(num_windows=6, dim=DIM, seed=0):
    """Windows with one action each (as tests/test_train.py builds them)."""
    rng = np.random.default_rng(seed)
    steps = TINY['input_steps']
    label = np.zeros((num_windows, 2), np.int64)
    box = np.zeros((num_windows, 2, 2), np.float32)
    valid = np.zeros((num_windows, 2), bool)
    label[:, 0] = rng.integers(1, 21, num_windows)
    start = rng.uniform(0.0, 0.6, num_windows)
    box[:, 0, 0], box[:, 0, 1] = start, start + rng.uniform(0.1, 0.4, num_windows)
    valid[:, 0] = True
    features = rng.normal(0, 0.1, (num_windows, steps, dim)).astype(np.float32)
    inside = (np.arange(steps)[None] / steps >= box[:, :1, 0]) & (np.arange(steps)[None] / steps < box[:, :1, 1])
    features[:, :, 0] += inside
    features[:, :, 1] += (label[:, :1] % 7) / 7.0
    return dict(features=features, gt_label=label, gt_box=box, gt_valid=valid)


def run_cfg(root, **overrides):
    return build_config(TINY_RUN, root=root, **overrides)


def same(a, b):
    """Exact equality of nested checkpoint contents (tensors, dicts, lists, numbers)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def read_only(folder, monkeypatch):
    """Make `folder` refuse new files. chmod alone does nothing for root (these tests may run
    as root), so the temporary-file creation every writer goes through fails there too, with
    the error a read-only folder gives."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o555)
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir).startswith(folder):
            raise PermissionError(13, 'Permission denied', dir)
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, 'mkstemp', mkstemp)
    return folder


@pytest.fixture(autouse=True)
def restore_permissions(tmp_path):
    yield
    for base, dirs, _ in os.walk(tmp_path):
        for d in dirs:
            os.chmod(os.path.join(base, d), 0o755)


# --- A. settings outside their domain ---------------------------------------------------------

@pytest.mark.parametrize('arg, field', [
    ('--nms_threshold=nan', 'nms_threshold'), ('--nms_threshold=-0.1', 'nms_threshold'),
    ('--nms_threshold=1.5', 'nms_threshold'),
    ('--fuse_temporal_weight=1.5', 'fuse_temporal_weight'), ('--fuse_temporal_weight=-0.5', 'fuse_temporal_weight'),
    ('--filter_neg_threshold=nan', 'filter_neg_threshold'), ('--filter_neg_threshold=1.5', 'filter_neg_threshold'),
    ('--filter_neg_threshold=0', 'filter_neg_threshold'), ('--filter_neg_threshold=-1', 'filter_neg_threshold'),
    ('--filter_neg_threshold_fuse=2', 'filter_neg_threshold_fuse'),
    ('--filter_neg_threshold_fuse=nan', 'filter_neg_threshold_fuse'),
    ('--filter_conf_threshold=nan', 'filter_conf_threshold'), ('--filter_conf_threshold=1', 'filter_conf_threshold'),
    ('--filter_conf_threshold=inf', 'filter_conf_threshold'), ('--filter_conf_threshold=-inf', 'filter_conf_threshold'),
    ('--learning_rates=1e-4,-1e-4', 'learning_rates'), ('--learning_rates=0', 'learning_rates'),
    ('--learning_rates=nan', 'learning_rates'), ('--learning_rates=inf', 'learning_rates'),
    ('--num_classes=20', 'num_classes'), ('--num_classes=101', 'num_classes'),
    ('--base_width=0', 'base_width'), ('--anchor_width=-8', 'anchor_width'),
    ('--input_steps=0', 'input_steps'), ('--input_steps=-128', 'input_steps'),
    ('--train_stride=0', 'train_stride'), ('--test_stride=-256', 'test_stride'),
    ('--window_size=0', 'window_size'),
    ('--overlap_ratio_threshold=1.1', 'overlap_ratio_threshold'),
    ('--overlap_ratio_threshold=nan', 'overlap_ratio_threshold'),
    ('--negative_ratio=-1', 'negative_ratio'), ('--negative_ratio=nan', 'negative_ratio'),
    ('--p_class=-1', 'p_class'), ('--p_loc=nan', 'p_loc'), ('--p_conf=inf', 'p_conf'),
    ('--keep_checkpoints=-1', 'keep_checkpoints'), ('--checkpoint_every=-2', 'checkpoint_every'),
    ('--feature_dtype=uint8', 'feature_dtype'), ('--feature_dtype=int32', 'feature_dtype'),
    ('--feature_dtype=bool', 'feature_dtype'),
    ('--device=gpu', 'device'), ('--device=cuda:x', 'device'), ('--device=cuda:-1', 'device'),
])
def test_setting_outside_its_domain_is_one_line_naming_it(arg, field):
    with pytest.raises(ValueError) as err:
        config.apply_overrides(config.Config(), [arg])
    message = str(err.value)
    assert f'{field}:' in message and 'use ' in message and '\n' not in message


@pytest.mark.parametrize('arg', ['--nms_threshold=0', '--nms_threshold=1', '--fuse_temporal_weight=0',
                                 '--fuse_temporal_weight=1', '--filter_conf_threshold=-1',
                                 '--filter_neg_threshold=1', '--feature_dtype=float16', '--feature_dtype=float64',
                                 '--device=cuda:1', '--device=cpu', '--keep_checkpoints=0',
                                 '--checkpoint_every=0', '--negative_ratio=0', '--p_class=0'])
def test_settings_at_the_edge_of_their_domain_are_accepted(arg):
    config.apply_overrides(config.Config(), [arg])


def test_released_defaults_are_valid():
    config.check_config(config.Config())


def test_a_saved_config_outside_the_domain_names_the_file(tmp_path):
    path = tmp_path / 'config.json'
    values = config.Config().to_dict()
    values['nms_threshold'] = 'high'
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r'config\.json: bad config: nms_threshold: .high.'):
        config.load_config(str(path))
    path.write_text('{"nms_threshold": 0.2,')
    with pytest.raises(ValueError, match=r'config\.json:1: not a config\.json'):
        config.load_config(str(path))


@pytest.mark.parametrize('script', ['test', 'train', 'fuse'])
def test_scripts_refuse_a_bad_setting_at_start_up(script, capsys, monkeypatch):
    module = __import__(script)
    argv = ['--mode', 'temporal', '--pretrain', 'tiny', '--method', 'main_stream', '--nms_threshold=nan']
    monkeypatch.setattr(sys, 'argv', [f'{script}.py'] + argv)
    with pytest.raises(SystemExit) as err:
        module.main(argv) if script != 'train' else module.main()
    assert str(err.value).startswith('error: bad config: nms_threshold: nan')


def test_train_checks_a_config_built_in_code(tmp_path):
    cfg = run_cfg(tmp_path)
    cfg.feature_dtype = 'uint8'
    with pytest.raises(ValueError, match='feature_dtype'):
        train.train(cfg, data=make_data(), progress=False)
    assert not os.path.exists(config.get_models_dir(cfg))


# --- B. weights outside their domain ----------------------------------------------------------

def tf_arrays(method='main_stream', dim=16):
    with torch.device('meta'):
        model = checkpoints.build_model(config.Config(method=method), dim)
    rng = np.random.RandomState(0)
    return {key: rng.standard_normal(shape).astype(np.float32) * 0.05 for key, shape, _ in checkpoints.tf_variables(model)}


@pytest.mark.parametrize('kind', ['nan', 'inf', 'bool', 'int', 'str', 'object'])
def test_convert_refuses_weights_outside_their_domain(tmp_path, kind, capsys):
    arrays = tf_arrays()
    key = next(k for k in arrays if k.endswith('/bias'))
    value = arrays[key]
    if kind == 'nan':
        value = value.copy()
        value[1] = np.nan
    elif kind == 'inf':
        value = value.copy()
        value[0] = -np.inf
    elif kind == 'bool':
        value = value > 0
    elif kind == 'int':
        value = (value * 100).astype(np.int32)
    elif kind == 'str':
        value = value.astype(str)
    else:
        value = value.astype(object)
    arrays[key] = value
    src, out = tmp_path / 'model-ep-30.npz', tmp_path / 'out.pt'
    np.savez(src, **arrays)
    with pytest.raises(SystemExit) as err:
        convert.main([str(src), str(out), '--method', 'main_stream'])
    message = str(err.value)
    assert message.startswith('error: ') and key in message, message
    assert ('non-finite' in message) if kind in ('nan', 'inf') else ('dtype' in message or 'cannot be read' in message)
    assert not out.exists()


def tiny_model(method='main_stream', seed=0):
    cfg = build_config(TINY, NARROW, method=method, device='cpu')
    torch.manual_seed(seed)
    return cfg, checkpoints.build_model(cfg, DIM)


def save_ckpt(path, model, cfg, **changes):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update(changes)
    torch.save({'model': state, 'method': cfg.method, 'feature_dim': DIM, 'config': cfg.to_dict(), 'epoch': 0}, path)


@pytest.mark.parametrize('bad', ['nan', 'inf', 'bool', 'int'])
def test_load_model_refuses_parameters_outside_their_domain(tmp_path, bad):
    cfg, model = tiny_model()
    key = next(k for k in model.state_dict() if k.endswith('weight'))
    value = model.state_dict()[key].clone()
    if bad == 'nan':
        value.view(-1)[3] = float('nan')
    elif bad == 'inf':
        value.view(-1)[0] = float('inf')
    elif bad == 'bool':
        value = value > 0
    else:
        value = (value * 100).to(torch.int32)
    path = tmp_path / 'model-ep-0.pt'
    save_ckpt(path, model, cfg, **{key: value})
    with pytest.raises(ValueError, match=key.replace('.', r'\.')) as err:
        checkpoints.load_model(path, cfg, feature_dim=DIM)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=key.replace('.', r'\.')):
        checkpoints.load_state(checkpoints.build_model(cfg, DIM), load(path)['model'], str(path))


def test_training_does_not_resume_from_non_finite_weights(tmp_path):
    data = make_data()
    cfg = run_cfg(tmp_path, learning_rates=(1e-3,))
    first = train.train(cfg, data=data, progress=False)
    ckpt = load(first['model_path'])
    key = next(iter(ckpt['model']))
    ckpt['model'][key].view(-1)[0] = float('nan')
    torch.save(ckpt, first['model_path'])
    with pytest.raises(ValueError, match=key.replace('.', r'\.') + '.*non-finite'):
        train.train(run_cfg(tmp_path, learning_rates=(1e-3,) * 2), data=data, progress=False)


def test_test_py_refuses_non_finite_predictions_naming_the_window(tmp_path):
    cfg, model = tiny_model()
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, TINY['input_steps'], DIM)).astype(np.float32)
    feats[2, 5, 1] = np.nan
    starts, videos = np.array([0, 128, 256, 0]), np.array(['video_test_0000004'] * 3 + ['video_test_0000051'])
    with pytest.raises(ValueError, match=r'window 2 \(video_test_0000004, start frame 256\).*not finite') as err:
        T.predict_windows(model, feats, starts, videos, cfg)
    assert 'features hold NaN' in str(err.value)
    # A model with a NaN weight: every window is named as affected, the model blamed.
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float('nan')
    with pytest.raises(ValueError, match=r'window 0 .*model is at fault.*4 of 4 windows'):
        T.predict_windows(model, np.nan_to_num(feats), starts, videos, cfg)


# --- C. full disk, read-only folders ----------------------------------------------------------

@pytest.fixture
def test_run(tmp_path):
    """A packed test feature file, its window list and two different checkpoints for test.run_test."""
    cfg = build_config(TINY, NARROW, method='main_stream', mode='temporal', pretrain='tiny', device='cpu',
                       results_dir=str(tmp_path / 'results'))
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, TINY['input_steps'], DIM)).astype(np.float32)
    packed, windows = tmp_path / 'packed.npy', tmp_path / 'window_info.log'
    np.save(packed, feats)
    sliding_windows.write_window_info(str(windows), [0, 128, 0], ['video_test_0000004'] * 2 + ['video_test_0000051'])
    ckpts = []
    _, model = tiny_model()
    for scale in (1.0, 1.5):   # two checkpoints that predict differently
        ckpts.append(tmp_path / f'model-{scale}.pt')
        save_ckpt(ckpts[-1], model, cfg, **{k: v * scale for k, v in model.state_dict().items()})
    return cfg, str(packed), str(windows), [str(p) for p in ckpts]


def disk_fills_after(module, function, name, monkeypatch):
    """Once module.function has returned, writing any file whose name contains `name` fails
    as on a full disk (the disk fills while the run goes on)."""
    real, full, after = tempfile.mkstemp, [], getattr(module, function)

    def mkstemp(*args, prefix='', **kwargs):
        if full and name in prefix:
            raise OSError(28, 'No space left on device')
        return real(*args, prefix=prefix, **kwargs)

    def then_full(*args, **kwargs):
        result = after(*args, **kwargs)
        full.append(True)
        return result
    monkeypatch.setattr(tempfile, 'mkstemp', mkstemp)
    monkeypatch.setattr(module, function, then_full)


def test_a_full_disk_between_the_two_outputs_never_leaves_a_mismatched_pair(test_run, monkeypatch):
    cfg, packed, windows, (first, second) = test_run
    quiet = dict(log=lambda *a: None)
    T.run_test(cfg, first, packed, windows, **quiet)
    predict_path, result_path = config.get_predict_result_path(cfg), config.get_result_path(cfg)
    old_predictions = open(predict_path).read()
    disk_fills_after(predictions, 'write_predictions', 'result_', monkeypatch)
    with pytest.raises(ValueError, match='No space left on device') as err:
        T.run_test(cfg, second, packed, windows, **quiet)
    assert result_path in str(err.value)
    # the new predictions are there, the old result (of the first checkpoint) is not
    assert open(predict_path).read() != old_predictions
    assert not os.path.exists(result_path)
    # ... and the message says how to finish the job
    assert '--predictions' in str(err.value)
    monkeypatch.undo()
    T.main(['--predictions', predict_path, '--out', result_path, '--input_steps=32', '--window_size=128',
            '--num_anchors=4,2,1'])
    det = postprocess.process_file(predict_path, str(result_path) + '.check', cfg, thumos14.video_fps())
    assert open(result_path).read() == thumos14.format_results(det)


def test_a_full_disk_for_the_predictions_removes_the_old_result_too(test_run, monkeypatch):
    cfg, packed, windows, (first, second) = test_run
    T.run_test(cfg, first, packed, windows, log=lambda *a: None)
    predict_path, result_path = config.get_predict_result_path(cfg), config.get_result_path(cfg)
    old_predictions = open(predict_path).read()
    disk_fills_after(checkpoints, 'load_model', 'predict_', monkeypatch)
    with pytest.raises(ValueError, match=f'cannot write {predict_path}: No space left on device.*was removed'):
        T.run_test(cfg, second, packed, windows, log=lambda *a: None)
    assert open(predict_path).read() == old_predictions and not os.path.exists(result_path)


def test_read_only_results_folder_fails_before_the_model_runs(test_run, monkeypatch):
    cfg, packed, windows, (first, _) = test_run
    folder = read_only(cfg.results_dir, monkeypatch)
    monkeypatch.setattr(checkpoints, 'load_model', lambda *a, **k: pytest.fail('the model was loaded'))
    argv = ['--mode', 'temporal', '--pretrain', 'tiny', '--method', 'main_stream', '--device=cpu',
            '--input_steps=32', '--window_size=128', '--num_anchors=4,2,1', '--base_width=24', '--anchor_width=40',
            f'--results_dir={cfg.results_dir}', '--checkpoint', first, '--features', packed, '--windows', windows]
    with pytest.raises(SystemExit) as err:
        T.main(argv)
    message = str(err.value)
    assert message.startswith('error: cannot write ') and folder in message and 'Permission denied' in message
    assert '\n' not in message


@pytest.mark.parametrize('folder, named', [('logs_dir', config.get_log_path),
                                           ('models_dir', config.get_models_dir)])
def test_read_only_output_folder_fails_at_start(tmp_path, monkeypatch, folder, named):
    cfg = run_cfg(tmp_path)
    read_only(getattr(cfg, folder), monkeypatch)
    monkeypatch.setattr(train, 'training_tensors', lambda *a: pytest.fail('training started'))
    with pytest.raises(ValueError) as err:
        train.train(cfg, data=make_data(), progress=False)
    assert named(cfg) in str(err.value) and 'Permission denied' in str(err.value)
    assert checkpoints.list_checkpoints(config.get_models_dir(cfg)) == []


def test_a_full_disk_during_a_checkpoint_write(tmp_path, monkeypatch):
    data = make_data()
    cfg = run_cfg(tmp_path, learning_rates=(1e-3,))
    first = train.train(cfg, data=data, progress=False)
    before = open(first['model_path'], 'rb').read()
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        with open(f, 'wb') as out:
            out.write(b'half a checkpoint')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(torch, 'save', save)
    path = checkpoints.checkpoint_path(config.get_models_dir(cfg), 1)
    with pytest.raises(ValueError, match=f'cannot write.*{re.escape(path)}: No space left on device'):
        checkpoints.write_checkpoint(path, {'x': torch.zeros(2)}, keep=1)
    with pytest.raises(ValueError, match='model-ep-1.pt: No space left on device'):
        train.train(run_cfg(tmp_path, learning_rates=(1e-3,) * 2), data=data, progress=False)
    monkeypatch.setattr(torch, 'save', real_save)
    # the older checkpoint is as it was, nothing half-written is left
    assert open(first['model_path'], 'rb').read() == before
    assert sorted(os.listdir(config.get_models_dir(cfg))) == ['.lock', 'config.json', 'model-ep-0.pt']


# --- D. runs that collide or leave debris -----------------------------------------------------

def test_a_second_training_of_the_same_run_is_refused(tmp_path):
    data = make_data()
    cfg = run_cfg(tmp_path, learning_rates=(1e-3,))
    train.train(cfg, data=data, progress=False)
    run_dir = config.get_models_dir(cfg)
    before = {name: open(os.path.join(run_dir, name), 'rb').read() for name in os.listdir(run_dir)}
    with fileio.folder_lock(run_dir, 'training run'):
        with pytest.raises(ValueError, match=f'{run_dir}: another training run is using this folder'):
            train.train(run_cfg(tmp_path, learning_rates=(1e-3,) * 2), fresh=True, data=data, progress=False)
    after = {name: open(os.path.join(run_dir, name), 'rb').read() for name in os.listdir(run_dir)}
    assert before.keys() == after.keys()
    assert all(before[n] == after[n] for n in before if n != '.lock')


def test_the_lock_dies_with_a_killed_process(tmp_path):
    folder = str(tmp_path / 'run')
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time, fileio\n'
                               f'with fileio.folder_lock({folder!r}):\n'
                               '    print("locked", flush=True)\n    time.sleep(60)\n'],
        cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(ValueError, match=f'pid {holder.pid}'):
            with fileio.folder_lock(folder):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with fileio.folder_lock(folder):   # no stale lock
        pass


def test_a_stale_temporary_is_removed_at_the_next_start(tmp_path, capsys):
    cfg = run_cfg(tmp_path, learning_rates=(1e-3,))
    run_dir = config.get_models_dir(cfg)
    os.makedirs(run_dir)
    stale = os.path.join(run_dir, '.model-ep-3.pt.x1y2z3.tmp')
    with open(stale, 'wb') as f:
        f.write(b'half a checkpoint')
    train.train(cfg, data=make_data(), progress=False)
    assert not os.path.exists(stale)
    assert '.model-ep-3.pt.x1y2z3.tmp' in capsys.readouterr().out


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """A 4-epoch run that keeps every checkpoint."""
    root = tmp_path_factory.mktemp('uninterrupted')
    cfg = run_cfg(root, learning_rates=(1e-3,) * 4, keep_checkpoints=0)
    train.train(cfg, data=make_data(), progress=False)
    run_dir = config.get_models_dir(cfg)
    return {e: load(p) for e, p in checkpoints.list_checkpoints(run_dir)}, open(config.get_log_path(cfg)).read()


def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path, uninterrupted, capsys):
    saved, log = uninterrupted
    cfg = run_cfg(tmp_path, learning_rates=(1e-3,) * 4, keep_checkpoints=0)
    train.train(run_cfg(tmp_path, learning_rates=(1e-3,) * 3, keep_checkpoints=0), data=make_data(), progress=False)
    newest = checkpoints.checkpoint_path(config.get_models_dir(cfg), 2)
    data = open(newest, 'rb').read()
    with open(newest, 'wb') as f:
        f.write(data[:len(data) // 2])   # truncated
    capsys.readouterr()
    result = train.train(cfg, data=make_data(), progress=False)
    out = capsys.readouterr().out
    assert f'note: skipping checkpoint {newest} cannot be read' in out
    assert 'resuming after epoch 1' in out
    assert result['epoch'] == 3
    for epoch in (2, 3):
        got = load(checkpoints.checkpoint_path(config.get_models_dir(cfg), epoch))
        assert same(got['model'], saved[epoch]['model']) and same(got['optimizer'], saved[epoch]['optimizer'])
    assert open(config.get_log_path(cfg)).read() == log


KILLED_RUN = textwrap.dedent('''
    import os, signal, sys
    import numpy as np, torch
    sys.path.insert(0, 'tests')
    from conftest import TINY_RUN, build_config
    import train
    torch.set_num_threads(2)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if '.model-ep-2.pt.' in os.path.basename(str(f)):   # killed half-way through writing epoch 2
            with open(f, 'wb') as out:
                out.write(b'PK half a checkpoint')
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f, *args, **kwargs)
    torch.save = save
    data = dict(np.load(sys.argv[2]))
    cfg = build_config(TINY_RUN, root=sys.argv[1], learning_rates=(1e-3,) * 4, keep_checkpoints=0)
    train.train(cfg, data=data, progress=False)
    print('not killed')
''')


def test_a_killed_training_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    saved, log = uninterrupted
    np.savez(tmp_path / 'data.npz', **make_data())
    done = subprocess.run([sys.executable, '-c', KILLED_RUN, str(tmp_path), str(tmp_path / 'data.npz')],
                          cwd=str(REPO), capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='2'))
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr[-3000:]
    cfg = run_cfg(tmp_path, learning_rates=(1e-3,) * 4, keep_checkpoints=0)
    run_dir = config.get_models_dir(cfg)
    assert [e for e, _ in checkpoints.list_checkpoints(run_dir)] == [0, 1]
    assert any(name.endswith('.tmp') for name in os.listdir(run_dir))   # debris of the killed write
    result = train.train(cfg, data=make_data(), progress=False)
    assert result['epoch'] == 3 and not any(name.endswith('.tmp') for name in os.listdir(run_dir))
    final = load(result['model_path'])
    assert same(final['model'], saved[3]['model'])
    assert same(final['optimizer'], saved[3]['optimizer'])
    assert same(final['rng'], saved[3]['rng'])
    assert open(config.get_log_path(cfg)).read() == log


# --- E. pickles that would allocate gigabytes -------------------------------------------------

def _long1(n):
    raw = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
    return b'\x8a' + bytes([len(raw)]) + raw


HUGE = 3 * 10 ** 9
BOMBS = {
    'bytearray of a huge int': b'\x80\x02cbuiltins\nbytearray\n' + _long1(HUGE) + b'\x85R.',
    'bytes of a huge int': b'\x80\x02c__builtin__\nbytes\n' + _long1(HUGE) + b'\x85R.',
    'empty array of a huge shape': (b'\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n'
                                    + _long1(HUGE) + b'\x85U\x01b\x87R.'),
    'ndarray of a huge shape': b'\x80\x02cnumpy\nndarray\n' + _long1(HUGE) + b'\x85\x85R.',
    'huge BINBYTES8': b'\x80\x05\x8e' + HUGE.to_bytes(8, 'little') + b'.',
    'huge BYTEARRAY8': b'\x80\x05\x96' + HUGE.to_bytes(8, 'little') + b'.',
    'huge memo index': b'\x80\x02]r' + (2 ** 28).to_bytes(4, 'little') + b'.',
    'many small bytearrays': (b'\x80\x02cbuiltins\nbytearray\nq\x00(' + b'h\x00J\x00\x00\x08\x00\x85R' * 64
                              + b'l.'),   # 64 x 512 KiB: each allowed alone, not together
}
BOMB_CHECK = textwrap.dedent('''
    import resource, sys, time, tracemalloc
    import safe_pickle
    # 2 GiB more than the process holds now: a bomb that gets through fails with MemoryError
    # instead of taking the machine's memory.
    size = [line for line in open('/proc/self/status') if line.startswith('VmSize:')][0].split()[1]
    resource.setrlimit(resource.RLIMIT_AS, (int(size) * 1024 + 2 * 1024 ** 3,) * 2)
    tracemalloc.start()
    for path in sys.argv[1:]:
        t0 = time.time()
        try:
            safe_pickle.safe_unpickle(path)
            outcome = 'loaded'
        except ValueError as err:
            outcome = 'ValueError ' + str(err).replace(chr(10), ' ')
        except MemoryError:
            outcome = 'MemoryError'
        print(f'{time.time() - t0:.3f} {tracemalloc.get_traced_memory()[1]} {outcome}', flush=True)
        tracemalloc.reset_peak()
''')


def test_pickles_that_would_allocate_gigabytes_are_refused_quickly(tmp_path):
    paths = []
    for i, (name, data) in enumerate(BOMBS.items()):
        assert len(data) < 80 or name == 'many small bytearrays', name
        paths.append(tmp_path / f'bomb{i}.pkl')
        paths[-1].write_bytes(data)
    done = subprocess.run([sys.executable, '-c', BOMB_CHECK] + [str(p) for p in paths], cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == len(BOMBS), done.stderr[-3000:]
    for name, path, line in zip(BOMBS, paths, lines):
        seconds, peak, outcome = line.split(' ', 2)
        assert outcome.startswith(f'ValueError {path}: unsafe or unreadable pickle'), (name, outcome)
        assert float(seconds) < 1 and int(peak) < 16 * 2 ** 20, (name, line)   # no gigabyte was allocated


def test_bounded_pickles_still_load(tmp_path):
    value = {'a': [np.arange(300_000, dtype=np.float64), bytearray(b'xyz'), b'bytes'], 'b': (1, 2.5, 'text')}
    for protocol in (0, 2, 4, 5):
        path = tmp_path / f'p{protocol}.pkl'
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        back = safe_pickle.safe_unpickle(path)
        np.testing.assert_array_equal(back['a'][0], value['a'][0])
        assert back['a'][1:] == value['a'][1:] and back['b'] == value['b']
    # bytearray(n) of a size the file can account for is allowed
    path = tmp_path / 'small.pkl'
    path.write_bytes(b'\x80\x02cbuiltins\nbytearray\nK\x10\x85R.')
    assert safe_pickle.safe_unpickle(path) == bytearray(16)
