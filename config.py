"""Every default of the project, on one screen.

Edit the values below and rerun, or override any of them on the command line
of any script with ``--key=value`` (``--learning_rates=1e-4,1e-4,1e-5`` for a
tuple, ``--bf16=true`` for a flag). Names follow the authors' release where it
had one. The values reproduce the released Decouple-SSAD (docs/method.md); the
switches marked "improvement" are off by default.
"""
import argparse
import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, fields
from os.path import join

import thumos14

@dataclass
class Config:
    # --- which run: output names are <mode>_<pretrain>_<method> ---
    mode: str = 'temporal'             # temporal (flow stream) | spatial (RGB stream) | concat (both: early fusion)
    pretrain: str = 'UCF101'           # UCF101 (D = 1024) | KnetV3 (D = 2048); D itself is read from the data
    method: str = 'decouple_ssad'      # main_stream | decouple_ssad

    # --- data ---
    data_source: str = 'release'       # release: the folders below | json (or i3d): the field's JSON + <video>.npy (§15)
    data_dir: str = 'data/thumos14'    # <data_dir>/<split>/{thumos14_<split>_annotation.csv, window_info.log, gt.npz}
    feature_path: str = 'data/THUMOS14/feature'  # <feature_path>/<split>/<mode>DataX<pretrain>/{0.npy.. | packed .npy | <video>.npy}
    eval_gt_dir: str = 'data/thumos14/eval_annotation'  # <Class>_test.txt, Ambiguous_test.txt, detclasslist.txt
    fps_file: str = ''                 # optional CSV "video,fps" (or a JSON); others: thumos14.FPS_EXCEPTIONS, then 30
                                       # (empty with data_source=json: the fps of annotation_json)
    # data_source=json (docs/method.md §15); the defaults are THUMOS14 with the field's two-stream I3D features
    annotation_json: str = 'data/thumos/annotations/thumos14.json'  # {"database": {video: {subset, duration, ...}}}
    feature_dir: str = 'data/thumos/i3d_features'   # <video>.npy [T, D], one clip of clip_frames every frames_per_step
    spatial_channels: tuple = (0, 1024)      # [lo, hi) of the RGB stream in each step
    temporal_channels: tuple = (1024, 2048)  # [lo, hi) of the flow stream; files are max(hi) wide
    streams: tuple = ('temporal', 'spatial')  # the streams the features hold: both (late fusion), or one (no fusion)
    frames_per_step: int = 4           # video frames between feature steps (THUMOS14 I3D: 4; others 8, 16, ...)
    clip_frames: int = 16              # video frames one step sees (I3D: 16; 4 = one frame / flow stack per step)
    train_subsets: tuple = ('Validation',)  # the JSON's subsets to train on (ActivityNet: training)
    test_subsets: tuple = ('Test',)    # the JSON's subsets to test and evaluate on (ActivityNet: validation)
    class_list: str = ''               # optional `id name` file of the classes (data_source=json); empty: the
                                       # data's own (the JSON's labels; THUMOS14's 20 with their official ids)
    train_split_set: str = 'val'
    test_split_set: str = 'test'
    window_size: int = 512             # frames per window: input_steps * frames_per_step
    input_steps: int = 128             # feature steps per window (one step = frames_per_step frames)
    train_stride: int = 128            # frames between training windows (32 steps)
    test_stride: int = 256             # frames between test windows (64 steps)
    overlap_ratio_threshold: float = 0.9  # a training window keeps an instance when > 0.9 of it is inside

    # --- network and anchors ---
    num_classes: int = thumos14.NUM_CLASSES  # background + the data's K classes: set from the data
                                             # (with_classes), not a setting; 21 for THUMOS14
    layers_name: tuple = ('AL1', 'AL2', 'AL3')
    num_anchors: tuple = (16, 8, 4)    # positions per anchor layer
    scale: tuple = (1 / 16, 1 / 8, 1 / 4)
    aspect_ratios: tuple = (0.5, 0.75, 1.0, 1.5, 2.0)
    base_width: int = 512              # filters of the base layers (smaller only for quick demos)
    anchor_width: int = 1024           # filters of the anchor layers and branches (likewise)
    identical_kernel_init: bool = True  # release quirk: same-shaped kernels start equal; False = independent draws

    # --- training ---
    batch_size: int = 48
    learning_rates: tuple = (1e-4,) * 30 + (1e-5,)  # one per epoch: 31 epochs, the last one matters
    p_class: float = 1.0               # loss = p_class * class + p_loc * loc + p_conf * conf
    p_loc: float = 10.0
    p_conf: float = 10.0
    negative_ratio: float = 1.0
    seed: int = 1129
    detach_match_score: bool = False   # improvement: no gradient from the conf loss into the offsets
    reshuffle_each_epoch: bool = True  # False = the release's one fixed shuffle for all epochs
    released_batching: bool = False    # True = the release's exact-48 batches (drops / repeats windows)
    small_num_data_for_test: bool = False  # release switch: train and test on one batch of windows
    test_batch_size: int = 256         # windows per inference batch (any size gives the same numbers)
    keep_checkpoints: int = 2          # newest checkpoints kept in models/<run>/
    checkpoint_every: int = 1          # epochs between checkpoints (the last epoch is always saved)
    save_checkpoints: bool = True      # False: no model-ep-<e>.pt at all; benchmarks time training, not the disk
    device: str = 'auto'               # auto | cpu | cuda | cuda:1 ...
    bf16: bool = False                 # improvement: bf16 autocast (fp32 is what the paper used)
    compile: bool = False              # improvement: torch.compile the model
    tf32: bool = False                 # improvement: TF32 matmuls / convolutions on NVIDIA GPUs
    # speed switches that keep the numbers (README, Speed, has the measurements)
    cuda_graph: bool = True            # replay each training step as one CUDA graph
    channels_last: bool = False        # NHWC convolutions: 1.5x with bf16 / tf32 on a GPU, none in fp32
    group_branches: bool = False       # Decouple-SSAD's branches as grouped convolutions (measured: no gain)
    cudnn_benchmark: bool = True       # autotune each convolution once (~10 s at start; pays in fp32 only)
    feature_dtype: str = 'float32'     # dtype features are held in memory (float32 | float16 | float64)

    # --- post-processing and fusion ---
    filter_neg_threshold: float = 0.98    # drop anchors with background score >= this
    filter_conf_threshold: float = 0.1    # drop anchors with conf <= this
    filter_neg_threshold_fuse: float = 0.99  # the same, on fused scores
    nms_threshold: float = 0.2
    fuse_temporal_weight: float = 2 / 3   # fused = w * temporal + (1 - w) * spatial

    # --- outputs ---
    models_dir: str = 'models'
    results_dir: str = 'results'
    logs_dir: str = 'logs'

    @property
    def training_epochs(self):
        return len(self.learning_rates)

    @property
    def run_name(self):
        return f'{self.mode}_{self.pretrain}_{self.method}'

    def to_dict(self):
        # Strings copied: a value equal to another field's (mode spatial, streams spatial) is then
        # never the same object, so a pickled config (a checkpoint's) is the same bytes whether its
        # values came from a command line or from the pipeline's own constants.
        return {key: _fresh_copy(value) for key, value in dataclasses.asdict(self).items()}


def _fresh_copy(value):
    if isinstance(value, tuple):
        return tuple(_fresh_copy(v) for v in value)
    return (value + '.')[:-1] if isinstance(value, str) else value


MODES = ('temporal', 'spatial', 'concat')
METHODS = ('main_stream', 'decouple_ssad')   # the two networks (checkpoints.NETWORKS builds them)
# cfg.data_source -> the module that reads it (load_data imports it by this name): the release's
# folders, or a dataset in the field's JSON format. A new data source is one module and one row here.
DATA_SOURCES = {'release': 'release_dataset', 'json': 'json_dataset',
                'i3d': 'json_dataset'}   # i3d: the json source's first name, still accepted
STREAMS = ('temporal', 'spatial')     # the two streams, in the order the pipeline runs them
# Early fusion (mode concat) reads the two streams side by side, RGB first as in the field's I3D files.
CONCAT_STREAMS = ('spatial', 'temporal')


# --- output paths, as the release names them ---

def get_models_dir(cfg):
    return join(cfg.models_dir, cfg.run_name)


def get_predict_result_path(cfg):
    return join(cfg.results_dir, f'predict_{cfg.run_name}.csv')


def get_result_path(cfg):
    return join(cfg.results_dir, f'result_{cfg.run_name}.txt')


def get_fuse_result_path(cfg):
    return join(cfg.results_dir, f'result_fuse_{cfg.pretrain}_{cfg.method}.txt')


def get_results_json_path(result_path):
    """The ActivityNet-style results JSON written beside a result file: result_<run>.txt -> result_<run>.json."""
    stem, ext = os.path.splitext(str(result_path))
    return stem + '.json' if ext != '.json' else str(result_path) + '.json'


def get_log_path(cfg):
    return join(cfg.logs_dir, f'{cfg.run_name}.log')


def get_anno_path(cfg, split_set):
    return join(cfg.data_dir, split_set, f'thumos14_{split_set}_annotation.csv')


def reads_json(cfg):
    """Whether the data source is the field's JSON format (data_source json, or its old name i3d)."""
    return DATA_SOURCES.get(cfg.data_source) == 'json_dataset'


def get_eval_gt_path(cfg):
    """The evaluation ground truth: the kit's folder, or with data_source=json the annotation JSON."""
    return cfg.annotation_json if reads_json(cfg) else cfg.eval_gt_dir


def get_eval_subset(cfg):
    """The subset evaluate.py scores: 'test' (the kit's files; THUMOS14's Test in a JSON), or
    with data_source=json the JSON's test_subsets, comma-separated."""
    return ','.join(cfg.test_subsets) if reads_json(cfg) else 'test'


# The window geometry in frames at 4 frames per step: 128-step windows, strides of 32 and 64 steps.
STEP_GEOMETRY = {'window_size': 128, 'train_stride': 32, 'test_stride': 64}


def resolve_defaults(cfg):
    """Fill the defaults that depend on other fields.

    - With data_source=json an empty fps_file is the annotation JSON, whose every video has its
      frame rate (the built-in table would put the videos of other rates at 30 fps without a word).
    - window_size, train_stride and test_stride are frames; left at their defaults (512, 128, 256:
      128, 32 and 64 steps of 4 frames) they are the same steps of frames_per_step frames, so that
      --frames_per_step=8 alone keeps the method's windows of 128 steps."""
    if reads_json(cfg) and not cfg.fps_file:
        cfg.fps_file = cfg.annotation_json
    step = cfg.frames_per_step
    if isinstance(step, int) and not isinstance(step, bool) and step >= 1 and step != 4:
        for name, steps in STEP_GEOMETRY.items():
            if getattr(cfg, name) == 4 * steps:
                setattr(cfg, name, step * steps)
    return cfg


def with_classes(cfg, class_list):
    """cfg for a model of `class_list` (a classes.ClassList): num_classes = background + its classes."""
    return dataclasses.replace(cfg, num_classes=len(class_list.names) + 1)


def get_data_x_path(cfg, split_set, mode=None):
    return thumos14.feature_folder(cfg.feature_path, split_set, mode or cfg.mode, cfg.pretrain)


# --- command-line overrides ---

def _parse_bool(text):
    low = text.lower()
    if low in ('1', 'true', 'yes', 'on'):
        return True
    if low in ('0', 'false', 'no', 'off'):
        return False
    raise ValueError(f'expected true or false, got {text!r}')


def _convert(name, default, text):
    """Turn `text` into a value of the same type as `default`."""
    try:
        if isinstance(default, bool):
            return _parse_bool(text)
        if isinstance(default, tuple):
            kind = type(default[0]) if default else str
            return tuple(_convert(name, kind(), item.strip()) for item in text.split(',') if item.strip())
        return type(default)(text)
    except ValueError as err:
        raise ValueError(f'--{name}={text}: {err}') from None


def apply_overrides(cfg, overrides):
    """Apply ``['--key=value', ...]`` to a Config; an unknown key lists the valid ones.

    ``--key value`` works too, and a bare ``--flag`` sets a boolean field to True.
    """
    valid = {f.name: f for f in fields(cfg)}
    args = list(overrides)
    while args:
        arg = args.pop(0)
        if not arg.startswith('--') or arg == '--':
            raise ValueError(f'unrecognised argument {arg!r}; config overrides are written --key=value')
        key, has_value, text = arg[2:].partition('=')
        key = key.replace('-', '_')
        if key not in valid:
            raise ValueError(f'unknown config key {key!r}. Valid keys:\n  ' + '\n  '.join(sorted(valid)))
        if key in DERIVED:
            raise ValueError(f'{key}: {text or "(no value)"} is not a setting: {DERIVED[key]}')
        if not has_value:
            if isinstance(getattr(cfg, key), bool) and (not args or args[0].startswith('--')):
                text = 'true'
            elif args and not args[0].startswith('--'):
                text = args.pop(0)
            else:
                raise ValueError(f'--{key} needs a value: --{key}=VALUE')
        setattr(cfg, key, _convert(key, getattr(cfg, key), text))
    resolve_defaults(cfg)
    check_config(cfg)
    return cfg


# Fields the data decide, recorded in a saved config.json; given on the command line they are refused.
DERIVED = {'num_classes': 'it is background + the data\'s classes (THUMOS14: 21); use class_list=FILE of '
                          '`id name` lines to choose the classes of a dataset in the JSON layout'}
FEATURE_DTYPES = ('float16', 'float32', 'float64')
DEVICE_SYNTAX = re.compile(r'auto|cpu|cuda(:\d+)?')


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _domain_problems(cfg):
    """One 'field: what is wrong (valid: ...)' per setting outside the values the code can use.

    Each of these used to run to the end with exit status 0 and a quietly wrong (or empty)
    result, or crash much later with a traceback."""
    problems = []

    def number(name, ok, valid, integer=False):
        value = getattr(cfg, name)
        if not _is_number(value) or (integer and not isinstance(value, int)) or value != value or not ok(value):
            problems.append(f'{name}: {value!r} is outside its domain; use {valid}')

    def numbers(name, ok, valid, integer=False):
        values = getattr(cfg, name)
        if not isinstance(values, (tuple, list)):
            problems.append(f'{name}: {values!r} is not a list; use {valid}')
            return
        bad = [v for v in values if not _is_number(v) or (integer and not isinstance(v, int)) or v != v or not ok(v)]
        if bad:
            problems.append(f'{name}: {bad[0]!r} is outside its domain; use {valid}')

    unit = lambda v: 0 <= v <= 1  # noqa: E731
    positive_int = lambda v: v >= 1  # noqa: E731
    # score_0 is a softmax probability: a threshold of 0 keeps no anchor, one above 1 is no filter
    # (write 1); NaN compares false, so it too keeps nothing.
    for name in ('filter_neg_threshold', 'filter_neg_threshold_fuse'):
        number(name, lambda v: 0 < v <= 1, 'a number in (0, 1]: anchors with background score >= it are dropped')
    # conf is the raw regression of the match score (an IoU in [0, 1]), not a probability and not
    # bounded: a negative threshold keeps every anchor, one >= 1 drops nearly all, NaN / inf all.
    number('filter_conf_threshold', lambda v: -math.inf < v < 1,
           'a finite number below 1 (conf is the raw regression of an IoU in [0, 1]; negative = no filter)')
    number('nms_threshold', unit, 'a number in [0, 1] (a tIoU)')
    number('fuse_temporal_weight', unit, 'a number in [0, 1]')
    number('overlap_ratio_threshold', unit, 'a number in [0, 1] (a fraction of an instance)')
    numbers('learning_rates', lambda v: 0 < v < math.inf, 'finite numbers > 0, one per epoch')
    for name in ('p_class', 'p_loc', 'p_conf'):
        number(name, lambda v: 0 <= v < math.inf, 'a finite number >= 0 (a loss weight)')
    number('negative_ratio', lambda v: v >= 0, 'a number >= 0')
    number('num_classes', lambda v: v >= 2, 'an integer >= 2 (background + at least one class)', integer=True)
    for name in ('base_width', 'anchor_width', 'input_steps', 'window_size', 'train_stride', 'test_stride',
                 'batch_size', 'test_batch_size'):
        number(name, positive_int, 'an integer >= 1', integer=True)
    numbers('num_anchors', positive_int, 'integers >= 1', integer=True)
    numbers('scale', lambda v: 0 < v < math.inf, 'finite numbers > 0')
    numbers('aspect_ratios', lambda v: 0 < v < math.inf, 'finite numbers > 0')
    for name in ('keep_checkpoints', 'checkpoint_every'):
        number(name, lambda v: v >= 0, 'an integer >= 0', integer=True)
    if cfg.feature_dtype not in FEATURE_DTYPES:
        problems.append(f'feature_dtype: {cfg.feature_dtype!r} is not supported; use one of '
                        f'{", ".join(FEATURE_DTYPES)} (an integer type would truncate the features)')
    if not isinstance(cfg.device, str) or not DEVICE_SYNTAX.fullmatch(cfg.device):
        problems.append(f'device: {cfg.device!r} is not a device; use auto, cpu, cuda or cuda:N')
    if cfg.data_source not in DATA_SOURCES:
        problems.append(f'data_source: {cfg.data_source!r} is not a data source; use one of {", ".join(DATA_SOURCES)}')
    problems += _json_problems(cfg)
    return problems


def _json_problems(cfg):
    """The settings of the field's JSON format: streams, their channel ranges, steps, subsets."""
    problems = []
    for name in ('frames_per_step', 'clip_frames'):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f'{name}: {value!r} is outside its domain; use an integer >= 1 (video frames)')
    if not reads_json(cfg) and (cfg.frames_per_step, cfg.clip_frames) != (4, 16):
        problems.append(f'frames_per_step {cfg.frames_per_step} / clip_frames {cfg.clip_frames}: the release\'s '
                        f'features are 4 frames a step; these settings are for data_source=json')
    streams = tuple(cfg.streams) if isinstance(cfg.streams, (tuple, list)) else ()
    if not streams or len(set(streams)) != len(streams) or not set(streams) <= set(STREAMS):
        problems.append(f'streams: {cfg.streams!r}; use temporal,spatial (both, fused) or one of them')
    for name in ('train_subsets', 'test_subsets'):
        names = getattr(cfg, name)
        if not isinstance(names, (tuple, list)) or not names or not all(isinstance(n, str) and n for n in names):
            problems.append(f'{name}: {names!r}; use one or more subset names of the JSON, comma-separated')
    if not problems and set(cfg.train_subsets) & set(cfg.test_subsets):
        shared = sorted(set(cfg.train_subsets) & set(cfg.test_subsets))
        problems.append(f'train_subsets and test_subsets share {shared}: the test would score videos the model trained on')
    return problems + _channel_problems(cfg, streams if set(streams) <= set(STREAMS) else STREAMS)


def _channel_problems(cfg, streams=STREAMS):
    """The JSON layout's streams: [lo, hi) integer ranges, non-empty and not overlapping."""
    ranges = {f'{m}_channels': getattr(cfg, f'{m}_channels') for m in ('spatial', 'temporal') if m in streams}
    for name, r in ranges.items():
        if not (isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                     for v in r) and 0 <= r[0] < r[1]):
            return [f'{name}: {r!r} is not a channel range; use lo,hi with 0 <= lo < hi (e.g. 0,1024)']
    if len(ranges) < 2:
        return []
    (a, b), (c, d) = ranges.values()
    if max(a, c) < min(b, d):
        return [f'spatial_channels {a},{b} and temporal_channels {c},{d} overlap; give each stream its own']
    return []


def check_config(cfg):
    """Reject settings that cannot work together or lie outside their domain, naming the fields
    and what they may be, in one line: ValueError('bad config: field: ...; field: ...')."""
    problems = []
    if cfg.mode not in MODES:
        problems.append(f'mode must be temporal, spatial or concat (both streams, early fusion), got {cfg.mode!r}')
    if cfg.method not in METHODS:
        problems.append(f'method must be {" or ".join(METHODS)}, got {cfg.method!r}')
    domain = _domain_problems(cfg)
    problems += domain
    if domain:   # the checks below do arithmetic on these fields
        raise ValueError('bad config: ' + '; '.join(problems))
    n = len(cfg.layers_name)
    if not (len(cfg.num_anchors) == len(cfg.scale) == n):
        problems.append(f'layers_name, num_anchors and scale need one entry per anchor layer '
                        f'(got {n}, {len(cfg.num_anchors)}, {len(cfg.scale)})')
    if len(cfg.num_anchors) == 3 and tuple(cfg.num_anchors) != (cfg.input_steps // 8, cfg.input_steps // 16,
                                                                cfg.input_steps // 32):
        problems.append(f'num_anchors {cfg.num_anchors} does not fit the network: with input_steps='
                        f'{cfg.input_steps} the anchor layers have {cfg.input_steps // 8}, '
                        f'{cfg.input_steps // 16}, {cfg.input_steps // 32} positions')
    if cfg.window_size != cfg.frames_per_step * cfg.input_steps:
        problems.append(f'window_size ({cfg.window_size}) must be frames_per_step * input_steps '
                        f'({cfg.frames_per_step} * {cfg.input_steps})')
    if not cfg.learning_rates:
        problems.append('learning_rates is empty: it holds one learning rate per epoch')
    if not cfg.aspect_ratios:
        problems.append('aspect_ratios is empty')
    if problems:
        raise ValueError('bad config: ' + '; '.join(problems))


def parse_config(parser=None, argv=None):
    """Parse a script's own arguments with `parser` (argparse) and the rest as config overrides.

    Returns (cfg, args). Every script calls this, so `--key=value` means the same everywhere.
    ``--config FILE`` starts from a saved config.json (e.g. the one beside a checkpoint).
    """
    parser = parser or argparse.ArgumentParser()
    parser.add_argument('--config', default=None, help='start from this config.json, then apply overrides')
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config) if args.config else Config()
    # The released scripts take mode / pretrain / method as plain options; accept them either way.
    for key in ('mode', 'pretrain', 'method'):
        if getattr(args, key, None) is not None:
            setattr(cfg, key, getattr(args, key))
    apply_overrides(cfg, rest)
    return cfg, args


def as_settings(values):
    """A saved config dict (JSON has no tuples) with its lists turned back into tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}


def config_from_dict(values):
    """Rebuild a Config from to_dict() output; unknown keys are an error."""
    cfg = Config()
    valid = {f.name for f in fields(cfg)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f'unknown config keys {unknown}')
    for key, value in as_settings(values).items():
        setattr(cfg, key, value)
    resolve_defaults(cfg)
    check_config(cfg)
    return cfg


def load_config(path):
    try:
        with open(path) as f:
            values = json.load(f)
    except OSError as err:
        raise ValueError(f'{path}: cannot read: {err.strerror or err}') from None
    except json.JSONDecodeError as err:
        raise ValueError(f'{path}:{err.lineno}: not a config.json: {err.msg}') from None
    if not isinstance(values, dict):
        raise ValueError(f'{path}: not a config.json: expected an object of config fields')
    try:
        return config_from_dict(values)
    except ValueError as err:
        raise ValueError(f'{path}: {err}') from None


def main():
    """`python config.py [--key=value ...]` prints the resulting config."""
    try:
        cfg, _ = parse_config()
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(json.dumps(cfg.to_dict(), indent=1))


if __name__ == '__main__':
    main()
