"""run.sh's whole pipeline in one process: train and test every stream, fuse, evaluate.

    python pipeline.py [stage] [pretrain] [method] [--key=value ...]
    EARLY_FUSION=1 python pipeline.py train_test_fuse I3D decouple_ssad --data_source=i3d

The arguments are run.sh's (stage train | test | fuse | train_test_fuse, default
train_test_fuse; pretrain default UCF101; method default decouple_ssad; config overrides
passed to every stage), and so are EARLY_FUSION=1 (mode concat too) and the outputs:
models/, results/, logs/<run>.log and each stream's console output in logs/<run>.out, the
same bytes as one process per script writes. run.sh calls this whenever the streams run
one after the other (fewer than two GPUs, SHARE_GPU unset); ONE_PROCESS=0 bash run.sh ...
keeps one process per script. One process imports torch once and sets up one CUDA context
and one cuDNN autotune instead of one per script. The wall time of every stage is printed
at the end.

Each stage calls the scripts' own code: train.train, then test.py's, fuse.py's, evaluate.py's
and fig/diagnose.py's main() with the argument lists run.sh gives them, each with the warnings
state of a fresh process (a warning shown by one stage is shown again by the next, as before).
"""
import argparse
import contextlib
import gc
import os
import sys
import time
import traceback
import warnings

import config
import evaluate
import fuse
import test  # the repository's test.py; it imports torch only when it runs a model

STAGES = ('train', 'test', 'fuse', 'train_test_fuse')
METHODS = ('decouple_ssad', 'main_stream')
DEFAULTS = ('train_test_fuse', 'UCF101', 'decouple_ssad')  # stage, pretrain, method, as in run.sh


class StreamFailed(ValueError):
    """A stream's training or test failed; its console log holds the details."""


# -----------------------------------------------------------------------------
# arguments and configs

def parse_args(argv):
    """run.sh's arguments -> dict(stage, pretrain, method, modes, overrides); ValueError when
    they are wrong, a config override included, before anything runs."""
    argv = list(argv)
    positional = []
    while argv and len(positional) < 3 and not argv[0].startswith('-'):
        positional.append(argv.pop(0))
    stage, pretrain, method = positional + list(DEFAULTS[len(positional):])
    if stage not in STAGES:
        raise ValueError(f'unknown stage {stage!r} ({" | ".join(STAGES)})')
    if method not in METHODS:
        raise ValueError(f'unknown method {method!r} ({" | ".join(METHODS)})')
    early = os.environ.get('EARLY_FUSION', '0')
    if early not in ('0', '1'):
        raise ValueError(f'EARLY_FUSION must be 0 or 1, got {early!r}')
    args = dict(stage=stage, pretrain=pretrain, method=method, overrides=argv,
                modes=('temporal', 'spatial') + (('concat',) if early == '1' else ()))
    stream_config(args, 'temporal')  # an unknown key or a bad value fails now, not after training
    return args


def stream_argv(args, mode):
    """The arguments run.sh gives train.py and test.py for one stream."""
    return ['--mode', mode, '--pretrain', args['pretrain'], '--method', args['method'], *args['overrides']]


def stream_config(args, mode):
    """The config train.py builds from stream_argv (its options, then the overrides)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in ('--mode', '--pretrain', '--method'):
        parser.add_argument(option, default=None)
    cfg, _ = config.parse_config(parser, stream_argv(args, mode))
    return cfg


# -----------------------------------------------------------------------------
# stages: timed, each with a fresh process's warnings

@contextlib.contextmanager
def stage(times, name):
    """Time the block as stage `name` (appended to `times`). Warnings as in a fresh process:
    the filters as they were, none yet shown (a once-per-place warning shows again), and the
    scripts' warnings.formatwarning put back afterwards."""
    t0, formatwarning = time.time(), warnings.formatwarning
    try:
        with warnings.catch_warnings():  # entering it resets the record of warnings shown
            yield
    finally:
        warnings.formatwarning = formatwarning
        times.append((name, time.time() - t0))


def run_script(main, argv):
    """A script's main(argv) in this process; its exit with `error: ...` becomes a ValueError."""
    try:
        main(argv)
    except SystemExit as exit:
        if exit.code not in (None, 0):
            text = exit.code if isinstance(exit.code, str) else f'exit status {exit.code}'
            raise ValueError(text.removeprefix('error: ')) from None


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


@contextlib.contextmanager
def console_log(path):
    """stdout and stderr of the block to the console (stdout) and to `path`."""
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        file = open(path, 'w', encoding='utf-8')
    except OSError as err:
        raise ValueError(f'cannot write the console log {path}: {err.strerror or err}') from None
    with file:
        tee = Tee(sys.stdout, file)
        with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
            yield


# -----------------------------------------------------------------------------
# the streams

def run_stream(args, mode, times):
    """Train and / or test one stream as the stage asks, its console output in logs/<run>.out as
    well; StreamFailed names the log, which ends with the error as the script's would."""
    import torch
    import train
    cfg = stream_config(args, mode)
    log = os.path.join(cfg.logs_dir, f'{cfg.run_name}.out')
    print(f'pipeline: {mode} stream (console output in {log})')
    with console_log(log):
        try:
            if args['stage'] in ('train', 'train_test_fuse'):
                with stage(times, f'train {mode}'):
                    train.train(cfg)
            if args['stage'] in ('test', 'train_test_fuse'):
                threads = torch.get_num_threads()  # test.py's main() may lower it for the process
                with stage(times, f'test {mode}'):
                    run_script(test.main, stream_argv(args, mode))
                torch.set_num_threads(threads)
        except ValueError as err:
            print(f'error: {err}', file=sys.stderr)
            raise StreamFailed(f'the {mode} stream failed ({first_line(err)}); see {log}') from None
        except Exception as err:  # a bug or an out-of-memory: the traceback goes to the log, as before
            traceback.print_exc()
            raise StreamFailed(f'the {mode} stream failed ({type(err).__name__}: {first_line(err)}); '
                               f'see {log}') from None


def first_line(err):
    return (str(err).splitlines() or [''])[0]


def run_streams(args, times):
    """Every stream in turn; the first failure stops the pipeline."""
    with stage(times, 'import torch'):
        import torch  # once, here, rather than once per script
        import train  # noqa: F401
    for mode in args['modes']:
        run_stream(args, mode, times)
        gc.collect()  # the stream's device memory is freed before the next stream's, as at a process end
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -----------------------------------------------------------------------------
# fusion and evaluation, as run.sh runs them

def fuse_and_evaluate(args, times):
    """fuse.py, evaluate.py on each stream and the fusion, fig/diagnose.py, then the summary table."""
    from fig import diagnose
    over = args['overrides']
    cfg = stream_config(args, 'temporal')
    fused = config.get_fuse_result_path(cfg)
    result = {mode: config.get_result_path(stream_config(args, mode)) for mode in config.MODES}
    print('pipeline: fusing the two streams')
    with stage(times, 'fuse'):
        run_script(fuse.main, ['--pretrain', args['pretrain'], '--method', args['method'], *over])
    for mode in ('temporal', 'spatial'):
        if os.path.isfile(result[mode]):
            print(f'pipeline: {mode} stream alone:')
            with stage(times, f'eval {mode}'):
                run_script(evaluate.main, [result[mode], '--summary', *over])
    early = 'concat' in args['modes'] and os.path.isfile(result['concat'])
    if early:
        print(f'pipeline: early fusion (mode concat), {result["concat"]}:')
        with stage(times, 'eval concat'):
            run_script(evaluate.main, [result['concat'], '--summary', *over])
    print(f'pipeline: two-stream fusion, {fused}:')
    with stage(times, 'eval fuse'):
        eval_json = os.path.join(cfg.results_dir, f'eval_fuse_{args["pretrain"]}_{args["method"]}.json')
        run_script(evaluate.main, [fused, '--json', eval_json, *over])
    with stage(times, 'diagnose'):
        run_script(diagnose.main, [fused, '--out', cfg.results_dir, *over])
    report = diagnose.report_path(fused, cfg.results_dir)
    print(f'pipeline: error diagnosis of the fusion (open it in a browser): {report}')
    files, labels = [fused], ['late fusion']
    if early:
        files, labels = files + [result['concat']], labels + ['early fusion (concat)']
    for mode, label in (('spatial', 'RGB only (spatial)'), ('temporal', 'flow only (temporal)')):
        if os.path.isfile(result[mode]):
            files, labels = files + [result[mode]], labels + [label]
    print('pipeline: summary, mAP (%) at tIoU 0.5 and averaged over 0.3:0.1:0.7:')
    with stage(times, 'summary'):
        run_script(evaluate.main, [*files, '--labels', *labels, '--metric', 'both', '--compare', *over])


def format_times(times, total):
    width = max(len(name) for name, _ in times + [('total', 0)])
    lines = [f'  {name:<{width}} {seconds:8.1f}' for name, seconds in times]
    return '\n'.join(['pipeline: wall time per stage (s):', *lines, f'  {"total":<{width}} {total:8.1f}'])


def main(argv=None):
    t0, times = time.time(), []
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args['stage'] != 'fuse':
            run_streams(args, times)
        if args['stage'] in ('fuse', 'train_test_fuse'):
            fuse_and_evaluate(args, times)
    except StreamFailed as err:
        raise SystemExit(f'pipeline: {err}. Nothing was fused.') from None
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(format_times(times, time.time() - t0))


if __name__ == '__main__':
    main()
