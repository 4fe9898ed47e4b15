"""pipeline.py, run.sh in one process: the same bytes as one process per script, and its failures."""
import re
import shutil
import zipfile

import pytest
import torch

from test_run_sh import overrides, run_sh, synthetic  # noqa: F401 (synthetic: a fixture)

import pipeline

RUN = ('train_test_fuse', 'synthetic', 'decouple_ssad')
# Two epochs of a very narrow network: the point is the bytes, not the accuracy.
SMALL = ['--base_width=16', '--anchor_width=32', '--batch_size=32', '--learning_rates=1e-3,1e-4']
BAR = re.compile(r'^.*\|.*win/s\]\s*')       # a tqdm progress bar, up to the text after it
TIMING = re.compile(r'\d+(\.\d+)? (s|windows/s)\b')


@pytest.fixture(scope='module')
def data(synthetic):
    return synthetic   # test_run_sh's small synthetic set


def args(data):
    return [*overrides(data), *SMALL]


@pytest.fixture(scope='module')
def both(data, tmp_path_factory):
    """run.sh with early fusion (three streams), one process per script and one process in all."""
    runs = {}
    for one_process in ('0', '1'):
        cwd = tmp_path_factory.mktemp(f'one_process_{one_process}')
        proc = run_sh(cwd, *RUN, *args(data), env={'EARLY_FUSION': '1', 'ONE_PROCESS': one_process})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[one_process] = cwd, proc
    return runs


# -----------------------------------------------------------------------------
# comparing two output folders

def output_files(root):
    """Every file under root, relative; the run folders' .lock (it holds a process id) left out."""
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file() and p.name != '.lock')


def console_lines(path):
    """A console log's lines without progress bars and with every time and speed masked."""
    text = path.read_text(encoding='utf-8')
    lines = (BAR.sub('', part) for part in re.split(r'[\r\n]', text))
    return [TIMING.sub(r'<t> \2', line) for line in lines if line.strip()]


def assert_same_checkpoint(a, b):
    """Every tensor and value equal, and every member of the two archives the same bytes (the
    archives differ only in their root folder, named after the temporary file)."""
    ckpt_a, ckpt_b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for key in ('model', 'optimizer', 'rng'):
        flat_a, flat_b = flatten(ckpt_a[key]), flatten(ckpt_b[key])
        assert flat_a.keys() == flat_b.keys(), (a, key)
        for name, value in flat_a.items():
            same = torch.equal(value, flat_b[name]) if torch.is_tensor(value) else value == flat_b[name]
            assert same, f'{a}: {key}{name} differs'
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        members = lambda z: {n.split('/', 1)[1]: z.read(n) for n in z.namelist()}  # noqa: E731
        assert members(za) == members(zb), a


def flatten(tree, prefix=''):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f'{prefix}/{key}').items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, f'{prefix}[{i}]').items()}
    return {prefix: tree}


def assert_same_outputs(a, b):
    assert output_files(a) == output_files(b)
    for name in output_files(a):
        if name.endswith('.pt'):
            assert_same_checkpoint(a / name, b / name)
        elif name.endswith('.out'):
            assert console_lines(a / name) == console_lines(b / name), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def evaluation_lines(stdout, first, last):
    """What the evaluation printed: the lines from `first` to `last`, run.sh's and pipeline.py's own left out."""
    lines = stdout[stdout.index(first):stdout.index(last)].splitlines()
    return [line for line in lines if not line.startswith(('run.sh:', 'pipeline:'))]


# -----------------------------------------------------------------------------
# tests

def test_one_process_writes_the_bytes_of_one_process_per_script(both):
    (separate, proc0), (one, proc1) = both['0'], both['1']
    assert 'in one process' in proc1.stdout and 'in one process' not in proc0.stdout
    names = output_files(one)
    for mode in ('temporal', 'spatial', 'concat'):
        assert f'logs/{mode}_synthetic_decouple_ssad.out' in names
        assert f'models/{mode}_synthetic_decouple_ssad/model-ep-1.pt' in names
        assert f'results/predict_{mode}_synthetic_decouple_ssad.csv' in names
    assert 'results/result_fuse_synthetic_decouple_ssad_diagnosis.html' in names
    assert_same_outputs(separate, one)
    # the evaluation tables, the diagnosis line and the summary, as printed
    assert evaluation_lines(proc0.stdout, 'run.sh: fusing', 'seconds elapsed') == \
        evaluation_lines(proc1.stdout, 'pipeline: fusing', 'pipeline: wall time per stage')


def test_the_time_of_every_stage_is_printed(both):
    stdout = both['1'][1].stdout
    table = stdout[stdout.index('pipeline: wall time per stage (s):'):].splitlines()[1:]
    names = [re.sub(r'\s+[\d.]+$', '', line.strip()) for line in table if re.search(r'\d$', line)]
    assert names == ['import torch', 'train temporal', 'test temporal', 'train spatial', 'test spatial',
                     'train concat', 'test concat', 'fuse', 'eval temporal', 'eval spatial', 'eval concat',
                     'eval fuse', 'diagnose', 'summary', 'total']


def test_fuse_stage_in_one_process(both, data, tmp_path):
    one = both['1'][0]
    shutil.copytree(one / 'results', tmp_path / 'results')
    for name in ('result_fuse_synthetic_decouple_ssad.txt', 'eval_fuse_synthetic_decouple_ssad.json',
                 'result_fuse_synthetic_decouple_ssad_diagnosis.html'):
        (tmp_path / 'results' / name).unlink()
    proc = run_sh(tmp_path, 'fuse', *RUN[1:], *args(data))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'fusion and evaluation, in one process' in proc.stdout
    assert output_files(tmp_path / 'results') == output_files(one / 'results')
    for name in output_files(one / 'results'):
        assert (tmp_path / 'results' / name).read_bytes() == (one / 'results' / name).read_bytes(), name


def test_a_failing_second_stream_stops_with_one_line(both, data, tmp_path):
    """Testing without the spatial checkpoints: the temporal stream is tested, the spatial one
    fails, nothing is fused, and both ways leave the same files and console logs."""
    ends = {}
    for one_process in ('0', '1'):
        cwd = tmp_path / one_process
        shutil.copytree(both['1'][0] / 'models', cwd / 'models')
        for path in (cwd / 'models' / 'spatial_synthetic_decouple_ssad').glob('model-ep-*.pt'):
            path.unlink()
        proc = run_sh(cwd, 'test', *RUN[1:], *args(data), env={'ONE_PROCESS': one_process})
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert 'spatial stream failed' in proc.stderr and 'Nothing was fused' in proc.stderr
        assert not (cwd / 'results' / 'result_fuse_synthetic_decouple_ssad.txt').exists()
        assert (cwd / 'results' / 'result_temporal_synthetic_decouple_ssad.txt').stat().st_size > 0
        ends[one_process] = proc.stderr
    assert_same_outputs(tmp_path / '0', tmp_path / '1')
    assert console_lines(tmp_path / '1' / 'logs' / 'spatial_synthetic_decouple_ssad.out')[-1].startswith(
        'error: no checkpoint model-ep-<epoch>.pt in models/spatial_synthetic_decouple_ssad')
    [line] = ends['1'].strip().splitlines()
    assert line == ('pipeline: the spatial stream failed (no checkpoint model-ep-<epoch>.pt in '
                    'models/spatial_synthetic_decouple_ssad: train this run first (python train.py --mode spatial '
                    '--pretrain synthetic --method decouple_ssad) or give --checkpoint); see '
                    'logs/spatial_synthetic_decouple_ssad.out. Nothing was fused.')


def stage_names(stdout, prog='pipeline'):
    """The stages of the wall-time table at the end of stdout, in order, 'total' last."""
    table = stdout[stdout.index(f'{prog}: wall time per stage (s):'):].splitlines()[1:]
    return [re.sub(r'\s+[\d.]+$', '', line.strip()) for line in table if re.search(r'\d$', line)]


@pytest.mark.parametrize('gpus, share_gpu, devices', [
    (0, False, None), (0, True, None), (1, False, None), (1, True, ('0', '0')), (2, False, ('0', '1')),
    (4, True, ('0', '1'))])
def test_streams_run_in_parallel_on_two_gpus_or_one_shared(gpus, share_gpu, devices):
    assert pipeline.parallel_devices(gpus, share_gpu) == devices


def test_parallel_streams_write_the_bytes_of_the_sequential_run(both, data, tmp_path, monkeypatch, capsys):
    """The parallel launch (two child processes at once, then concat, then fusion here), taken on
    a CPU by planning for one GPU with SHARE_GPU=1: the same files as one process in all."""
    for name, value in (('EARLY_FUSION', '1'), ('SHARE_GPU', '1'), ('ONE_PROCESS', '1')):
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    pipeline.main([*RUN, *args(data)], gpu_count=1)
    stdout = capsys.readouterr().out
    assert 'pipeline: 1 GPU(s): temporal on GPU 0 and spatial on GPU 0, in parallel' in stdout
    assert 'pipeline: early fusion (mode concat) on GPU 0' in stdout
    assert 'Train Loss' not in stdout   # the streams' console output went to their logs only
    assert_same_outputs(both['1'][0], tmp_path)
    assert evaluation_lines(stdout, 'pipeline: fusing', 'pipeline: wall time per stage') == \
        evaluation_lines(both['1'][1].stdout, 'pipeline: fusing', 'pipeline: wall time per stage')
    assert stage_names(stdout) == ['import torch', 'temporal and spatial, in parallel', 'train concat',
                                   'test concat', 'fuse', 'eval temporal', 'eval spatial', 'eval concat',
                                   'eval fuse', 'diagnose', 'summary', 'total']


def test_a_failing_parallel_stream_stops_before_fusing(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('SHARE_GPU', '0')
    monkeypatch.delenv('EARLY_FUSION', raising=False)
    monkeypatch.delenv('ONE_PROCESS', raising=False)
    monkeypatch.chdir(tmp_path)
    bad = args(data)
    bad[1] = f'--feature_path={tmp_path}/no_such_features'
    with pytest.raises(SystemExit) as exit:
        pipeline.main(['train_test_fuse', 'synthetic', 'main_stream', *bad], gpu_count=2)
    assert str(exit.value) == ('pipeline: the temporal stream failed (exit 1); see '
                               'logs/temporal_synthetic_main_stream.out. Nothing was fused.')
    out, err = capsys.readouterr()
    assert 'pipeline: 2 GPU(s): temporal on GPU 0 and spatial on GPU 1, in parallel' in out
    assert 'no_such_features' in err   # the end of the failed stream's log
    for mode in ('temporal', 'spatial'):   # both ran, each to its own log
        log = (tmp_path / 'logs' / f'{mode}_synthetic_main_stream.out').read_text().splitlines()
        assert log[-1].startswith('error: ') and 'no_such_features' in log[-1], mode
    assert not (tmp_path / 'results' / 'result_fuse_synthetic_main_stream.txt').exists()


def test_an_unexpected_error_goes_to_the_log_with_its_traceback(data, tmp_path, monkeypatch):
    import train

    def broken(cfg):
        raise RuntimeError('out of memory, say')
    monkeypatch.setattr(train, 'train', broken)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        pipeline.main(['train', 'synthetic', 'decouple_ssad', *args(data)])
    assert str(exit.value) == ('pipeline: the temporal stream failed (RuntimeError: out of memory, say); see '
                               'logs/temporal_synthetic_decouple_ssad.out. Nothing was fused.')
    log = (tmp_path / 'logs' / 'temporal_synthetic_decouple_ssad.out').read_text()
    assert log.startswith('Traceback (most recent call last):') and 'RuntimeError: out of memory, say' in log
    assert not (tmp_path / 'logs' / 'spatial_synthetic_decouple_ssad.out').exists()


@pytest.mark.parametrize('bad, message', [
    ('--no_such_key=1', "error: unknown config key 'no_such_key'"),
    ('--batch_size=many', 'error: --batch_size=many: invalid literal'),
    ('--nms_threshold=2', 'error: bad config: nms_threshold: 2.0 is outside its domain'),
])
def test_overrides_are_checked_before_anything_runs(bad, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        pipeline.main([*RUN, '--device=cpu', bad])
    assert str(exit.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_stage_method_and_early_fusion_are_checked(monkeypatch):
    for argv, message in ((['deploy'], "error: unknown stage 'deploy'"),
                          (['train', 'UCF101', 'ssd'], "error: unknown method 'ssd'")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            pipeline.main(argv)
    monkeypatch.setenv('EARLY_FUSION', 'yes')
    with pytest.raises(SystemExit, match='EARLY_FUSION must be 0 or 1'):
        pipeline.main(['train'])


def test_one_process_switch_is_checked(tmp_path):
    proc = run_sh(tmp_path, 'train', env={'ONE_PROCESS': 'yes'})
    assert proc.returncode == 2 and 'ONE_PROCESS must be 0 or 1' in proc.stderr
