"""Shared test fixtures: the repository on sys.path, the THUMOS14 reference data, and the
one place test configs are built.

The reference data lives outside the repository, in ../shared/thumos14 (CI has it
there); THUMOS14_SHARED=/path/to/thumos14 points elsewhere.

Configs: tests take the `make_config` fixture and call
``make_config(*presets, root=None, **overrides)``; the presets below (TINY, NARROW,
TINY_RUN) are the small settings that keep CPU runs fast. A bare default config is left
only where a test checks the released defaults themselves.
"""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get('THUMOS14_SHARED', REPO.parent / 'shared' / 'thumos14'))

import config  # noqa: E402

# A quarter of the arithmetic: 32 feature steps per window, anchor layers of 4, 2, 1 positions.
TINY = dict(input_steps=32, window_size=128, num_anchors=(4, 2, 1))
# Narrow base / anchor layers (the output layout stays that of the paper).
NARROW = dict(base_width=24, anchor_width=40)
# A tiny main-stream training run on the CPU: batches of 3, three epochs at 1e-3.
TINY_RUN = dict(TINY, method='main_stream', device='cpu', batch_size=3, learning_rates=(1e-3,) * 3)


def build_config(*presets, root=None, **overrides):
    """A config.Config from `presets` (dicts, later ones win), then `overrides`, checked by
    config.check_config (ValueError on settings that cannot work together).

    root: put the training outputs (models_dir, logs_dir) in root/models and root/logs.
    Module-level helpers import this; tests take the `make_config` fixture, which is it.
    """
    values = {}
    for preset in presets:
        values.update(preset)
    if root is not None:
        values.update(models_dir=str(Path(root) / 'models'), logs_dir=str(Path(root) / 'logs'))
    values.update(overrides)
    cfg = config.Config(**values)
    config.check_config(cfg)
    return cfg


@pytest.fixture(scope='session')
def make_config():
    """``make_config(*presets, root=None, **overrides)`` -> a checked config.Config (see build_config)."""
    return build_config


@pytest.fixture(scope='session')
def shared():
    """Path to the shared THUMOS14 reference data; skips when it is not there."""
    if not SHARED.is_dir():
        pytest.skip(f'THUMOS14 reference data not found at {SHARED}')
    return SHARED
