"""Safe file output: write to a temporary file beside the target, then rename; one
process at a time per run folder.

An interrupted run therefore never leaves a half-written result, log or
checkpoint that looks whole, and two runs never write into one folder.
"""
import contextlib
import fcntl
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; rename it to `path` if the block succeeds.

        with atomic_path('results/x.txt') as tmp:
            np.savetxt(tmp, ...)

    A failure of the file system (folder not writable, disk full, read-only mount), in
    setting up, in the block or in the rename, is a ValueError naming `path` and the cause;
    the target is then as it was before.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
        os.close(fd)
    except OSError as err:
        raise ValueError(f'cannot write {path}: {describe(err)}') from None
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise ValueError(f'cannot write {path}: {describe(err)}') from None
    finally:
        try:
            if os.path.exists(tmp):
                os.remove(tmp)
        except OSError:
            pass   # the original error says what went wrong


@contextlib.contextmanager
def atomic_open(path, mode='w', **kwargs):
    """Like open(path, mode) for writing, but the file appears only once it is complete."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def describe(err):
    """The cause of an OSError in a few words: 'No space left on device', 'Permission denied'."""
    return err.strerror or str(err) or type(err).__name__


def check_writable(path):
    """Fail now, before any long work, if `path` cannot be created (ValueError naming it).

    Creates and deletes a temporary file beside it, as atomic_path will: os.access alone
    says yes to root in a folder of mode 0555 and knows nothing of a read-only mount."""
    folder = os.path.dirname(os.path.abspath(path)) or '.'
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ValueError(f'cannot create folder for {path}: {describe(err)}') from None
    if os.path.isdir(path):
        raise ValueError(f'cannot write {path}: it is a folder')
    if not os.access(folder, os.W_OK):
        raise ValueError(f'cannot write {path}: folder {folder} is not writable')
    try:
        fd, probe = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(f'cannot write {path}: folder {folder}: {describe(err)}') from None


@contextlib.contextmanager
def folder_lock(folder, what='run'):
    """Hold an exclusive lock on `folder` (a `.lock` file in it) for the block; ValueError if
    another process holds it. The kernel drops the lock when the process ends, however it
    ends, so a crash never leaves it stuck."""
    path = os.path.join(folder, '.lock')
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise ValueError(f'cannot lock {folder} (file {path}): {describe(err)}') from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or 'another process'
            raise ValueError(f'{folder}: another {what} is using this folder (pid {holder}); '
                             f'wait for it to end, or use another output folder') from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)   # closing releases the lock


def remove_stale_temporaries(folder, target=''):
    """Delete the temporary files atomic_path leaves when a process is killed mid-write: all of
    `folder`'s, or only those of the file named `target`.

    Call it only where no live writer can own them (holding folder_lock, or for a file only
    this process writes)."""
    removed = []
    prefix = f'.{target}.' if target else '.'
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith(prefix) and name.endswith('.tmp'):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed
