"""One command for a machine with one GPU: the CUDA tests, the training benchmark, the whole
run.sh and feature extraction, ending with one table. Under 8 minutes on one H100 / H200.

    python bench/device_check.py            # on the GPU, full sizes
    python bench/device_check.py --small    # tiny sizes, about a minute on a 2-core CPU: checks this script

Stages, each in its own process with its own time limit; one that fails or runs out of
time is a row of the table and the others still run:

  cuda     pytest tests/test_cuda.py (without a GPU: a "no GPU" row, not run)
  train    bench/bench_train.py, Decouple-SSAD in fp32 and in bf16, 31 epochs each on a
           THUMOS14-sized synthetic set (4741 windows, D = 2048, held on the device), then
           inference over 5103 windows
  run.sh   the demo's synthetic set (data/make_synthetic.py) and demo.sh's config, train_test_fuse
  extract  bench/bench_extract.py (frames/s per backbone and stream set, DIS flow), then i3d with
           RAFT flow through data/extract_features.py on bench_extract's synthetic video

The table (stage, what, figure, unit, seconds) is printed and written to device_check.txt
in $OUT when that is set, else in bench_out/; each stage's console output goes to
device_check_logs/<stage>.log beside it. Exit status 1 when any stage failed.
"""
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import fileio  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
FAILED = 'FAILED'

# Sizes and time limits (seconds) of each mode. The GPU limits add up to 7.5 minutes; training
# should take about 150 s (31 epochs at README's H100 rates, fp32 and bf16, plus autotuning).
SETTINGS = {
    'gpu': dict(train=['--windows', '4741', '--test-windows', '5103', '--dim', '2048', '--epochs', '31'],
                synthetic=[], demo_epochs=20,
                extract=dict(frames=200, width=320, height=240, backbones=None), raft_size=None,
                limits={'cuda': 60, 'train': 210, 'run.sh': 75, 'extract': 60, 'raft': 45}),
    'small': dict(train=['--windows', '24', '--test-windows', '24', '--dim', '64', '--epochs', '2',
                         '--base_width=32', '--anchor_width=64', '--batch_size=8'],
                  synthetic=['--train_windows', '32', '--test_windows', '32'], demo_epochs=2,
                  extract=dict(frames=17, width=96, height=72, backbones='tiny'), raft_size=64,
                  limits={'cuda': 60, 'train': 120, 'run.sh': 120, 'extract': 120, 'raft': 180}),
}
TRAIN_VARIANTS = ['fp32', 'bf16']


# ---------------------------------------------------------------- running a command

def run_logged(argv, limit, log_path):
    """Run argv from the repository root, its output appended to log_path; (exit status, or
    None when it ran past `limit` seconds and was killed, and the seconds it took)."""
    t0 = time.time()
    with open(log_path, 'a') as log:
        log.write(f'$ {" ".join(argv)}\n')
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, 'PYTHONUNBUFFERED': '1'})
        try:
            status = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # its own session: the command and anything it started
            proc.wait()
            status = None
        log.write(f'[exit status {status}, {time.time() - t0:.1f} s]\n')
    return status, time.time() - t0


def failure(stage, what, status, seconds, log_path, limit):
    """A FAILED row; status: the exit status, None when the command ran out of time, or words."""
    why = (f'ran past its {limit} s' if status is None else status if isinstance(status, str)
           else f'exit status {status}')
    return (stage, f'{what}: {why}, see {os.path.basename(log_path)}', FAILED, '-', seconds)


def read_log(log_path):
    with open(log_path) as f:
        return f.read()


# ---------------------------------------------------------------- the stages

def cuda_stage(ctx):
    what = 'pytest tests/test_cuda.py'
    if ctx['device'] != 'cuda':
        return [('cuda', f'{what}: no GPU, not run', 'skipped', '-', 0.0)]
    log, limit = ctx['log']('cuda'), ctx['limits']['cuda']
    status, seconds = run_logged([PYTHON, '-m', 'pytest', '-q', '-p', 'no:randomly', 'tests/test_cuda.py'],
                                 limit, log)
    summaries = re.findall(r'^\W*(\d+ (?:passed|failed|skipped|errors?)\b.*) in [\d.]+s', read_log(log), re.MULTILINE)
    summary = summaries[-1] if summaries else 'no summary'
    passed = re.search(r'(\d+) passed', summary)
    if status != 0 or not passed:
        return [failure('cuda', f'{what} ({summary})', status, seconds, log, limit)]
    return [('cuda', f'{what} ({summary})', passed.group(1), 'tests passed', seconds)]


def train_stage(ctx):
    """bench_train's figures come from its JSON, written after each measurement: a run killed
    at its time limit still reports the measurements it finished."""
    log, limit, settings = ctx['log']('train'), ctx['limits']['train'], ctx['settings']
    figures_path = os.path.join(ctx['logs'], 'train.json')
    status, seconds = run_logged([PYTHON, 'bench/bench_train.py', *settings['train'], '--methods', 'decouple_ssad',
                                  '--variants', ','.join(TRAIN_VARIANTS), '--test-variants', ','.join(TRAIN_VARIANTS),
                                  f'--device={ctx["device"]}', '--json', figures_path], limit, log)
    figures = {'train': {}, 'test': {}}
    try:
        with open(figures_path) as f:
            figures = json.load(f)
    except (OSError, ValueError):   # none written, or cut short by the time limit: its rows are FAILED
        pass
    sizes = dict(zip(settings['train'][0::2], settings['train'][1::2]))
    rows = []
    for variant in TRAIN_VARIANTS:
        what = (f'Decouple-SSAD {variant}, {sizes["--windows"]} windows, D = {sizes["--dim"]}, '
                f'{sizes["--epochs"]} epochs (figure: last epoch)')
        out = figures['train'].get(f'decouple_ssad {variant}')
        rows.append(('train', what, f'{out["windows_per_s"]:.1f}', 'windows/s', out['measured_total_s']) if out else
                    failure('train', what, status if status != 0 else 'not measured', seconds, log, limit))
    for variant in TRAIN_VARIANTS:
        what = f'inference {variant}, {sizes["--test-windows"]} windows (network alone)'
        out = figures['test'].get(f'decouple_ssad {variant}')
        rows.append(('train', what, f'{out["windows"] / out["network_s"]:.0f}', 'windows/s', out['network_s'])
                    if out else failure('train', what, status if status != 0 else 'not measured', seconds, log, limit))
    return rows


def demo_overrides(data, epochs):
    """demo.sh's config (its learning rates: 5e-4, the last two epochs 5e-5) on the synthetic set in `data`."""
    rates = ['5e-4'] * (epochs - 2) + ['5e-5'] * 2 if epochs > 2 else ['5e-4', '5e-5'][:epochs]
    return [f'--data_dir={data}/thumos14', f'--feature_path={data}/feature',
            f'--eval_gt_dir={data}/thumos14/eval_annotation', f'--fps_file={data}/thumos14/video_fps.csv',
            '--base_width=128', '--anchor_width=256', '--batch_size=16', f'--learning_rates={",".join(rates)}']


def run_sh_stage(ctx):
    log, limit, settings = ctx['log']('run.sh'), ctx['limits']['run.sh'], ctx['settings']
    work = ctx['work']
    what = f'train_test_fuse on the demo set, {settings["demo_epochs"]} epochs, late fusion kit mAP@0.5'
    t0 = time.time()
    status, _ = run_logged([PYTHON, 'data/make_synthetic.py', '--out', f'{work}/synthetic', *settings['synthetic']],
                           limit, log)
    if status != 0:
        return [failure('run.sh', 'data/make_synthetic.py', status, time.time() - t0, log, limit)]
    outputs = [f'--{kind}_dir={work}/{kind}' for kind in ('models', 'results', 'logs')]
    status, _ = run_logged(['bash', 'run.sh', 'train_test_fuse', 'synthetic', 'decouple_ssad',
                            *demo_overrides(f'{work}/synthetic', settings['demo_epochs']), *outputs,
                            f'--device={ctx["device"]}'], limit - (time.time() - t0), log)
    seconds = time.time() - t0
    fused = re.search(r'^late fusion\s+([\d.]+)', read_log(log), re.MULTILINE)
    if status != 0 or not fused:
        return [failure('run.sh', what, status, seconds, log, limit)]
    return [('run.sh', what, fused.group(1), '%', seconds)]


def bench_extract_rows(ctx, log, limit):
    """bench/bench_extract.py's command line and its rows ('<backbone> <streams> <flow> <frames/s>'
    or '<backbone> skipped: <why>'), the one place that knows them."""
    extract = ctx['settings']['extract']
    argv = [PYTHON, 'bench/bench_extract.py', '--frames', str(extract['frames']), '--width', str(extract['width']),
            '--height', str(extract['height']), '--device', ctx['device']]
    if extract['backbones']:
        argv += ['--backbones', extract['backbones']]
    status, seconds = run_logged(argv, limit, log)
    rows = []
    for line in read_log(log).splitlines():
        measured = re.fullmatch(r'(\S+)\s+(\S+)\s+(\S+)\s+([\d.]+)', line.strip())
        skipped = re.fullmatch(r'(\S+)\s+skipped: (.*)', line.strip())
        if measured and measured.group(1) != 'backbone':
            backbone, streams, flow, fps = measured.groups()
            rows.append(('extract', f'{backbone} {streams}, flow {flow}', fps, 'frames/s',
                         extract['frames'] / float(fps)))
        elif skipped:
            rows.append(('extract', f'{skipped.group(1)}: {skipped.group(2)}', 'skipped', '-', 0.0))
    return status, seconds, rows


def extract_stage(ctx):
    log, limit = ctx['log']('extract'), ctx['limits']['extract']
    status, seconds, rows = bench_extract_rows(ctx, log, limit)
    if status != 0 or not rows:
        rows.append(failure('extract', 'bench/bench_extract.py', status, seconds, log, limit))
    return rows


def raft_stage(ctx):
    """i3d, both streams, RAFT flow: data/extract_features.py's own frames/s of the video (model set-up excluded)."""
    import bench_extract   # here, not at the top: a broken bench_extract must not stop the other stages
    log, limit, settings = ctx['log']('raft'), ctx['limits']['raft'], ctx['settings']
    extract = settings['extract']
    what = f'i3d spatial+temporal, flow raft ({extract["frames"]} frames {extract["width"]}x{extract["height"]})'
    video = os.path.join(ctx['work'], 'raft.avi')
    bench_extract.write_video(video, extract['frames'], extract['width'], extract['height'])
    size = ['--size', str(settings['raft_size'])] if settings['raft_size'] else []
    status, seconds = run_logged([PYTHON, 'data/extract_features.py', video, '--split', 'bench',
                                  '--out', os.path.join(ctx['work'], 'raft'), '--backbone', 'i3d', '--random-weights',
                                  '--flow', 'raft', *size, f'--device={ctx["device"]}'], limit, log)
    fps = re.search(r'([\d.]+) frames/s\s*$', read_log(log), re.MULTILINE)
    if status != 0 or not fps:
        return [failure('extract', what, status, seconds, log, limit)]
    return [('extract', what, fps.group(1), 'frames/s', extract['frames'] / float(fps.group(1)))]


STAGES = [('cuda', cuda_stage), ('train', train_stage), ('run.sh', run_sh_stage), ('extract', extract_stage),
          ('extract', raft_stage)]


# ---------------------------------------------------------------- the table

def format_table(rows):
    header = ('stage', 'what', 'figure', 'unit', 'seconds')
    cells = [header] + [(stage, what, str(figure), unit, f'{seconds:.1f}')
                        for stage, what, figure, unit, seconds in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ['  '.join(cell.rjust(w) if i in (2, 4) else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in cells]
    return '\n'.join([lines[0], '-' * len(lines[0]), *lines[1:]])


def describe_device(device):
    import torch
    name = torch.cuda.get_device_name(0) if device == 'cuda' else f'CPU, {os.cpu_count()} cores'
    return f'device {device} ({name}), torch {torch.__version__}'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--small', action='store_true', help='tiny sizes and 2 epochs: checks this script on a CPU')
    parser.add_argument('--device', default='auto', choices=['auto', 'cuda', 'cpu'])
    parser.add_argument('--out', default=None, help='folder of the table and logs (default: $OUT, else bench_out/)')
    args = parser.parse_args(argv)
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda, but CUDA is not available here (--device cpu or auto)')
    device = args.device if args.device != 'auto' else 'cuda' if torch.cuda.is_available() else 'cpu'
    out = args.out or os.environ.get('OUT') or os.path.join(ROOT, 'bench_out')
    logs = os.path.join(out, 'device_check_logs')
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    mode = 'small' if args.small else 'gpu'
    work = tempfile.mkdtemp(prefix='device_check_')
    ctx = dict(device=device, settings=SETTINGS[mode], limits=SETTINGS[mode]['limits'], logs=logs, work=work,
               log=lambda stage: os.path.join(logs, f'{stage}.log'))
    heading = f'{describe_device(device)}, {"--small" if args.small else "full sizes"}'
    print(heading, flush=True)
    t0, rows = time.time(), []
    for stage, run_stage in STAGES:
        stage_t0 = time.time()
        try:
            stage_rows = run_stage(ctx)
        except Exception as err:  # noqa: BLE001 - a broken stage is a row; the others still run
            traceback.print_exc()
            stage_rows = [(stage, f'{run_stage.__name__}: {type(err).__name__}: {err}', FAILED, '-',
                           time.time() - stage_t0)]
        for row in stage_rows:
            print(f'{row[0]}: {row[1]}: {row[2]} {row[3]} ({row[4]:.1f} s)', flush=True)
        rows += stage_rows
    shutil.rmtree(work, ignore_errors=True)
    rows.append(('total', 'this check, wall time', '', '', time.time() - t0))
    table = f'{heading}\n{format_table(rows)}\n'
    table_path = os.path.join(out, 'device_check.txt')
    with fileio.atomic_open(table_path) as f:
        f.write(table)
    print(f'\n{table}(written to {table_path}; console output of each stage in {logs})')
    return 1 if any(row[2] == FAILED for row in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
