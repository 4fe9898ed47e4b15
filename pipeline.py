"""Train and test both streams, fuse them and evaluate: the whole pipeline, in its order.

    python pipeline.py [stage] [pretrain] [method] [--key=value ...]    # bash run.sh ... runs this
    EARLY_FUSION=1 python pipeline.py train_test_fuse I3D decouple_ssad --data_source=json

stage is one of STAGES (default train_test_fuse), pretrain the feature set (default UCF101),
method one of config.METHODS (default decouple_ssad); the config overrides go to every script.
EARLY_FUSION=1 trains and tests mode concat too. The outputs (models/, results/,
logs/<run>.log and each stream's console output in logs/<run>.out, or the folders the
overrides name) are the same bytes however the streams run:

- one after the other, in this process (fewer than two GPUs, SHARE_GPU unset): torch is
  imported once, with one CUDA context and one cuDNN autotune. Each script's own code runs
  with the argument list it would get on a command line and the warnings state of a fresh
  process (a warning shown by one stage is shown again by the next);
- ONE_PROCESS=0: one after the other, one child process per script, as the release's run.sh
  ran them, and printing as it did ("run.sh: ...");
- in parallel (two or more GPUs, or one with SHARE_GPU=1, which needs memory for both): the
  temporal and the spatial stream as two child processes (train.py, then test.py), on GPU 0
  and GPU 1 (both on GPU 0 when shared), their console output in logs/<run>.out only; then,
  with EARLY_FUSION=1, mode concat on GPU 0.

Features of one stream (--streams=spatial, e.g. one RGB backbone; data_source=json) train and
test that stream alone, then evaluate.py, fig/diagnose.py and the summary on it: nothing is fused.
Otherwise fuse.py, evaluate.py on each stream and on the fusion, fig/diagnose.py on the fusion and
a summary of every variant under both metrics (in this process, or with ONE_PROCESS=0 one
child process each). A failing stream stops the pipeline before fusion, with one line naming
its console log (exit status 1); a wrong stage, method or switch is exit status 2. It ends
with the elapsed time and the wall time of every stage.
"""
import argparse
import codecs
import contextlib
import gc
import os
import subprocess
import sys
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor

import config
import evaluate
import fuse
import test  # the repository's test.py; it imports torch only when it runs a model

# What each stage runs: 'train' and 'test' are per stream, 'fuse' is fusion and evaluation.
STAGES = {'train': ('train',), 'test': ('test',), 'fuse': ('fuse',), 'train_test_fuse': ('train', 'test', 'fuse')}
DEFAULTS = ('train_test_fuse', 'UCF101', 'decouple_ssad')  # stage, pretrain, method
SWITCHES = {'EARLY_FUSION': '0', 'ONE_PROCESS': '1', 'SHARE_GPU': '0'}  # environment switches and their defaults
HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = {'train': 'train.py', 'test': 'test.py', 'fuse': 'fuse.py', 'evaluate': 'evaluate.py',
           'diagnose': os.path.join('fig', 'diagnose.py')}
LOG_TAIL = 15  # lines of a failed child stream's console log repeated on stderr


class UsageError(ValueError):
    """A wrong stage, method or switch: exit status 2, as a command's usage error."""


class UsageExit(SystemExit):
    """main()'s exit for a UsageError: its message, turned into exit status 2 below."""


class StreamFailed(ValueError):
    """A stream's training or test failed; its console log holds the details."""


# -----------------------------------------------------------------------------
# arguments and configs

def parse_args(argv, environ=os.environ):
    """The command line and the switches -> dict(stage, pretrain, method, overrides, modes,
    steps, one_process, share_gpu, prog); UsageError or ValueError when they are wrong, a
    config override included, before anything runs."""
    argv = list(argv)
    positional = []
    while argv and len(positional) < 3 and not argv[0].startswith('-'):
        positional.append(argv.pop(0))
    stage, pretrain, method = positional + list(DEFAULTS[len(positional):])
    if stage not in STAGES:
        raise UsageError(f'unknown stage {stage!r} ({" | ".join(STAGES)})')
    if method not in config.METHODS:
        raise UsageError(f'unknown method {method!r} ({" | ".join(config.METHODS)})')
    switch = {}
    for name, default in SWITCHES.items():
        value = environ.get(name, default)
        if value not in ('0', '1'):
            raise UsageError(f'{name} must be 0 or 1, got {value!r}')
        switch[name] = value == '1'
    args = dict(stage=stage, pretrain=pretrain, method=method, overrides=argv, steps=STAGES[stage],
                one_process=switch['ONE_PROCESS'], share_gpu=switch['SHARE_GPU'],
                # one process per script is the release's run.sh and prints as it did
                prog='pipeline' if switch['ONE_PROCESS'] else 'run.sh')
    cfg = stream_config(args, 'temporal')  # an unknown key or a bad value fails now, not after training
    # The streams the features hold (config streams), in pipeline order; one stream is not fused.
    streams = tuple(m for m in config.STREAMS if m in cfg.streams)
    if switch['EARLY_FUSION'] and len(streams) < 2:
        raise UsageError(f'EARLY_FUSION=1 needs two streams; the features hold {streams[0]} only (streams)')
    args['modes'] = streams + (('concat',) if switch['EARLY_FUSION'] else ())
    return args


def single_stream(args):
    """The one stream of features that hold one (config streams), else None: no fusion then."""
    streams = [m for m in args['modes'] if m != 'concat']
    return streams[0] if len(streams) == 1 else None


def stream_argv(args, mode):
    """The arguments train.py and test.py get for one stream."""
    return ['--mode', mode, '--pretrain', args['pretrain'], '--method', args['method'], *args['overrides']]


def stream_config(args, mode):
    """The config train.py builds from stream_argv (its options, then the overrides)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in ('--mode', '--pretrain', '--method'):
        parser.add_argument(option, default=None)
    cfg, _ = config.parse_config(parser, stream_argv(args, mode))
    return cfg


def console_log_path(cfg):
    """logs/<run>.out: a stream's console output (its loss lines are config.get_log_path's)."""
    return os.path.join(cfg.logs_dir, f'{cfg.run_name}.out')


def parallel_devices(gpus, share_gpu):
    """CUDA_VISIBLE_DEVICES of the temporal and the spatial stream when they run in parallel
    (two or more GPUs; one shared with SHARE_GPU=1), or None: one after the other."""
    if gpus >= 2:
        return '0', '1'
    if gpus == 1 and share_gpu:
        return '0', '0'
    return None


def say(args, text, file=None):
    print(f'{args["prog"]}: {text}', file=file or sys.stdout, flush=True)


# -----------------------------------------------------------------------------
# stages: timed; scripts in this process or in a child process

@contextlib.contextmanager
def timed(times, name):
    """Time the block as stage `name` (appended to `times`)."""
    t0 = time.time()
    try:
        yield
    finally:
        times.append((name, time.time() - t0))


@contextlib.contextmanager
def fresh_warnings():
    """Warnings as in a fresh process: the filters as they were, none yet shown (a once-per-place
    warning shows again), and the scripts' warnings.formatwarning put back afterwards."""
    formatwarning = warnings.formatwarning
    try:
        with warnings.catch_warnings():  # entering it resets the record of warnings shown
            yield
    finally:
        warnings.formatwarning = formatwarning


def call_main(main, argv):
    """A script's main(argv) in this process; its exit with `error: ...` becomes a ValueError."""
    try:
        main(argv)
    except SystemExit as exit:
        if exit.code not in (None, 0):
            text = exit.code if isinstance(exit.code, str) else f'exit status {exit.code}'
            raise ValueError(text.removeprefix('error: ')) from None


def script_main(script):
    """The main() of one of SCRIPTS but train.py (whose code this process calls as train.train)."""
    if script == 'diagnose':
        from fig import diagnose  # matplotlib: only for a stage that evaluates
        return diagnose.main
    return {'test': test.main, 'fuse': fuse.main, 'evaluate': evaluate.main}[script]


def run_child(script, argv, out=None, console=True, gpu=None):
    """`python -u script argv` (one of SCRIPTS) in a child process -> its exit status. out: a
    binary file that gets the child's stdout and stderr, which go to this process's stdout too
    when `console` (run.sh's `2>&1 | tee`); without `out` the child writes to this process's
    stdout and stderr. gpu: the child's CUDA_VISIBLE_DEVICES."""
    env = dict(os.environ) if gpu is None else dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
    command = [sys.executable, '-u', os.path.join(HERE, SCRIPTS[script]), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    if out is None:
        return subprocess.run(command, env=env).returncode
    if not console:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    decoder = codecs.getincrementaldecoder('utf-8')('replace')
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as child:
        while chunk := child.stdout.read1(1 << 16):
            out.write(chunk)
            out.flush()
            sys.stdout.write(decoder.decode(chunk))
            sys.stdout.flush()
    return child.returncode


def run_script(args, times, name, script, argv):
    """One of SCRIPTS with its command line, timed as stage `name`: its main() in this process,
    or a child process with ONE_PROCESS=0. ValueError when it fails."""
    if args['one_process']:
        with timed(times, name), fresh_warnings():
            call_main(script_main(script), argv)
        return
    with timed(times, name):
        status = run_child(script, argv)
    if status:
        raise ValueError(f'{SCRIPTS[script]} failed (exit status {status})')


class Tee:
    """A text stream that writes to the console and to a file: run.sh's `2>&1 | tee FILE`. Not a
    terminal, as tee's pipe was not, so progress bars are drawn as they were."""

    def __init__(self, console, file):
        self.console, self.file = console, file
        self.encoding = getattr(console, 'encoding', None) or 'utf-8'

    def write(self, text):
        self.console.write(text)
        return self.file.write(text)

    def flush(self):
        self.console.flush()
        self.file.flush()

    def isatty(self):
        return False


def open_log(path, mode):
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        return open(path, mode, **({} if 'b' in mode else {'encoding': 'utf-8'}))
    except OSError as err:
        raise ValueError(f'cannot write the console log {path}: {err.strerror or err}') from None


@contextlib.contextmanager
def console_log(path):
    """stdout and stderr of the block to the console (stdout) and to `path`."""
    with open_log(path, 'w') as file:
        tee = Tee(sys.stdout, file)
        with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
            yield


# -----------------------------------------------------------------------------
# the streams

def stream_in_process(args, mode, times):
    """Train and / or test one stream in this process as the stage asks, its console output in
    logs/<run>.out as well; StreamFailed names the log, which ends with the error as the
    script's would."""
    import torch
    import train
    cfg = stream_config(args, mode)
    log = console_log_path(cfg)
    say(args, f'{mode} stream (console output in {log})')
    with console_log(log):
        try:
            if 'train' in args['steps']:
                with timed(times, f'train {mode}'), fresh_warnings():
                    train.train(cfg)
            if 'test' in args['steps']:
                threads = torch.get_num_threads()  # test.py's main() may lower it for the process
                run_script(args, times, f'test {mode}', 'test', stream_argv(args, mode))
                torch.set_num_threads(threads)
        except ValueError as err:
            print(f'error: {err}', file=sys.stderr)
            raise StreamFailed(f'the {mode} stream failed ({first_line(err)}); see {log}') from None
        except Exception as err:  # a bug or an out-of-memory: the traceback goes to the log, as a script's would
            traceback.print_exc()
            raise StreamFailed(f'the {mode} stream failed ({type(err).__name__}: {first_line(err)}); '
                               f'see {log}') from None
    gc.collect()  # the stream's device memory is freed before the next stream's, as at a process end
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_line(err):
    return (str(err).splitlines() or [''])[0]


def stream_in_children(args, mode, times, console=True, gpu=None):
    """Train and / or test one stream as the stage asks, a child process per script (train.py,
    then test.py if it trained), console output to logs/<run>.out and, when `console`, to
    stdout as well. Returns (exit status, the log's path)."""
    log = console_log_path(stream_config(args, mode))
    if console:
        say(args, f'{mode} stream (console output in {log})')
    with open_log(log, 'wb') as file:
        for step in ('train', 'test'):
            if step in args['steps']:
                with timed(times, f'{step} {mode}'):
                    status = run_child(step, stream_argv(args, mode), out=file, console=console, gpu=gpu)
                if status:
                    return status, log
    return 0, log


def stream_failed(mode, status, log):
    """StreamFailed for a child stream, the end of its console log shown on stderr first."""
    try:
        with open(log, encoding='utf-8', errors='replace') as f:
            tail = f.read().splitlines()[-LOG_TAIL:]
    except OSError:
        tail = []
    print('\n'.join(tail), file=sys.stderr, flush=True)
    return StreamFailed(f'the {mode} stream failed (exit {status}); see {log}')


def run_streams(args, times, gpus):
    """Every stream in turn, in this process or a child process per script; the first failure stops."""
    what = f'{gpus} GPU(s): {" ".join(args["modes"])} one after the other'
    say(args, f'{what}, in one process (ONE_PROCESS=0: one process per script)' if args['one_process'] else what)
    for mode in args['modes']:
        if args['one_process']:
            stream_in_process(args, mode, times)
            continue
        status, log = stream_in_children(args, mode, times)
        if status:
            raise stream_failed(mode, status, log)


def run_streams_in_parallel(args, times, gpus, devices):
    """The temporal and the spatial stream as two child processes at once, on `devices`; then
    concat, with early fusion, on the first. A failing stream stops before concat."""
    pair = ('temporal', 'spatial')
    say(args, f'{gpus} GPU(s): temporal on GPU {devices[0]} and spatial on GPU {devices[1]}, in parallel')
    with timed(times, 'temporal and spatial, in parallel'), ThreadPoolExecutor(len(pair)) as pool:
        runs = list(pool.map(lambda mode, gpu: stream_in_children(args, mode, [], console=False, gpu=gpu),
                             pair, devices))
    for mode, (status, log) in zip(pair, runs):
        if status:
            raise stream_failed(mode, status, log)
    if 'concat' in args['modes']:
        say(args, f'early fusion (mode concat) on GPU {devices[0]}')
        status, log = stream_in_children(args, 'concat', times, console=False, gpu=devices[0])
        if status:
            raise stream_failed('concat', status, log)


# -----------------------------------------------------------------------------
# fusion and evaluation

def evaluate_single_stream(args, times, mode):
    """Features of one stream: evaluate.py and fig/diagnose.py on that stream's result, and its summary."""
    from fig import diagnose
    over = args['overrides']
    cfg = stream_config(args, mode)
    result = config.get_result_path(cfg)
    say(args, f'one stream ({mode}), nothing to fuse; {result}:')
    eval_json = os.path.join(cfg.results_dir, f'eval_{cfg.run_name}.json')
    run_script(args, times, f'eval {mode}', 'evaluate', [result, '--json', eval_json, *over])
    run_script(args, times, 'diagnose', 'diagnose', [result, '--out', cfg.results_dir, *over])
    say(args, f'error diagnosis (open it in a browser): {diagnose.report_path(result, cfg.results_dir)}')
    label = {'spatial': 'RGB only (spatial)', 'temporal': 'flow only (temporal)'}[mode]
    say(args, f'summary, {label}, mAP (%) under every metric that applies to its classes:')
    run_script(args, times, 'summary', 'evaluate', [result, '--labels', label, '--metric', 'both', '--summary',
                                                    *over])


def fuse_and_evaluate(args, times):
    """fuse.py, evaluate.py on each stream and the fusion, fig/diagnose.py, then the summary table;
    features of one stream: evaluate_single_stream."""
    from fig import diagnose
    if single_stream(args):
        return evaluate_single_stream(args, times, single_stream(args))
    over = args['overrides']
    cfg = stream_config(args, 'temporal')
    fused = config.get_fuse_result_path(cfg)
    result = {mode: config.get_result_path(stream_config(args, mode)) for mode in config.MODES}
    say(args, 'fusing the two streams')
    run_script(args, times, 'fuse', 'fuse', ['--pretrain', args['pretrain'], '--method', args['method'], *over])
    for mode in ('temporal', 'spatial'):
        if os.path.isfile(result[mode]):
            say(args, f'{mode} stream alone:')
            run_script(args, times, f'eval {mode}', 'evaluate', [result[mode], '--summary', *over])
    early = 'concat' in args['modes'] and os.path.isfile(result['concat'])
    if early:
        say(args, f'early fusion (mode concat), {result["concat"]}:')
        run_script(args, times, 'eval concat', 'evaluate', [result['concat'], '--summary', *over])
    say(args, f'two-stream fusion, {fused}:')
    eval_json = os.path.join(cfg.results_dir, f'eval_fuse_{args["pretrain"]}_{args["method"]}.json')
    run_script(args, times, 'eval fuse', 'evaluate', [fused, '--json', eval_json, *over])
    run_script(args, times, 'diagnose', 'diagnose', [fused, '--out', cfg.results_dir, *over])
    say(args, f'error diagnosis of the fusion (open it in a browser): {diagnose.report_path(fused, cfg.results_dir)}')
    files, labels = [fused], ['late fusion']
    if early:
        files, labels = files + [result['concat']], labels + ['early fusion (concat)']
    for mode, label in (('spatial', 'RGB only (spatial)'), ('temporal', 'flow only (temporal)')):
        if os.path.isfile(result[mode]):
            files, labels = files + [result[mode]], labels + [label]
    say(args, 'summary, mAP (%) at tIoU 0.5 and averaged over 0.3:0.1:0.7:')
    run_script(args, times, 'summary', 'evaluate', [*files, '--labels', *labels, '--metric', 'both', '--compare',
                                                    *over])


# -----------------------------------------------------------------------------
# the pipeline

def run(args, times, gpu_count=None):
    """Every step of the stage, in order (see the module's docstring)."""
    cfg = stream_config(args, args['modes'][0])
    for folder in (cfg.logs_dir, cfg.results_dir, cfg.models_dir):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise ValueError(f'cannot create {folder}: {err.strerror or err}') from None
    say(args, f'stage={args["stage"]} pretrain={args["pretrain"]} method={args["method"]} '
              f'modes={" ".join(args["modes"])} {" ".join(args["overrides"])}'.rstrip())
    if 'train' in args['steps'] or 'test' in args['steps']:
        with timed(times, 'import torch'):
            import torch  # once, here, rather than once per script
            if args['one_process']:
                import train  # noqa: F401
        gpus = torch.cuda.device_count() if gpu_count is None else gpu_count
        devices = None if single_stream(args) else parallel_devices(gpus, args['share_gpu'])
        if devices:
            run_streams_in_parallel(args, times, gpus, devices)
        else:
            run_streams(args, times, gpus)
    elif args['one_process']:
        say(args, 'fusion and evaluation, in one process (ONE_PROCESS=0: one process per script)')
    if 'fuse' in args['steps']:
        fuse_and_evaluate(args, times)


def format_times(args, times, total):
    width = max(len(name) for name, _ in times + [('total', 0)])
    lines = [f'  {name:<{width}} {seconds:8.1f}' for name, seconds in times]
    return '\n'.join([f'{args["prog"]}: wall time per stage (s):', *lines, f'  {"total":<{width}} {total:8.1f}'])


def main(argv=None, gpu_count=None):
    """gpu_count: the GPUs to plan for (default: torch.cuda.device_count()); a test gives one to
    take the parallel path on a machine without."""
    t0, times = time.time(), []
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        raise UsageExit(f'error: {err}') from None
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    try:
        run(args, times, gpu_count)
    except StreamFailed as err:
        raise SystemExit(f'{args["prog"]}: {err}. Nothing was fused.') from None
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    total = time.time() - t0
    say(args, f'{int(total) // 60} minutes and {int(total) % 60} seconds elapsed.')
    print(format_times(args, times, total))


if __name__ == '__main__':
    try:
        main()
    except UsageExit as exit:
        print(exit, file=sys.stderr)
        sys.exit(2)
