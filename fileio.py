"""Atomic file output: write to a temporary file beside the target, then rename.

An interrupted run therefore never leaves a half-written result, log or
checkpoint that looks whole.
"""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; rename it to `path` if the block succeeds.

        with atomic_path('results/x.txt') as tmp:
            np.savetxt(tmp, ...)
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode='w', **kwargs):
    """Like open(path, mode) for writing, but the file appears only once it is complete."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def check_writable(path):
    """Fail now, before any long work, if `path` cannot be created."""
    folder = os.path.dirname(os.path.abspath(path)) or '.'
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise SystemExit(f'error: cannot create folder for {path}: {err}') from None
    if not os.access(folder, os.W_OK) or (os.path.isdir(path)):
        raise SystemExit(f'error: cannot write {path}')
