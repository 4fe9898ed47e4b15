"""Shared test fixtures: the repository on sys.path, and the THUMOS14 reference data.

The reference data lives outside the repository, in ../shared/thumos14 (CI has it
there); THUMOS14_SHARED=/path/to/thumos14 points elsewhere.
"""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get('THUMOS14_SHARED', REPO.parent / 'shared' / 'thumos14'))


@pytest.fixture(scope='session')
def shared():
    """Path to the shared THUMOS14 reference data; skips when it is not there."""
    if not SHARED.is_dir():
        pytest.skip(f'THUMOS14 reference data not found at {SHARED}')
    return SHARED
