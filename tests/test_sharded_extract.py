"""Extraction over several processes: torchrun ranks and --shard i/n write what one process writes; a
process killed mid-video leaves nothing that looks finished, and the rerun extracts only what is missing."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

cv2 = pytest.importorskip('cv2', reason='install requirements-extract.txt')  # CI installs it
import feature_files  # noqa: E402
from data import extract_features as ef  # noqa: E402
from data import shards  # noqa: E402
from tests.test_extract import moving_box, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LENGTHS = {'a': 50, 'b': 103, 'c': 21, 'd': 77, 'e': 33}
TINY = ['--backbone', 'tiny', '--flow', 'dis', '--random-weights', '--threads', '1', '--device', 'cpu']
I3D = ['--backbone', 'i3d', '--size', '32', '--flow', 'dis', '--random-weights', '--threads', '1', '--device', 'cpu',
       '--batch', '2']
# Dies after writing a video's first features file, before its sidecar: the worst moment to be killed.
DYING_RUNNER = '''import os, sys
sys.path.insert(0, {repo!r})
import feature_files
from data import extract_features
write_sidecar = feature_files.write_sidecar
def dying(npy_path, doc):
    if doc['video'] == {victim!r}:
        os._exit(3)
    write_sidecar(npy_path, doc)
feature_files.write_sidecar = dying
sys.exit(extract_features.main(sys.argv[1:]))
'''


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / 'videos'
    folder.mkdir()
    for name, n in LENGTHS.items():
        write_video(folder / f'{name}.avi', moving_box(n, seed=n))
    return folder


@pytest.fixture(autouse=True)
def keep_thread_counts():
    """--threads sets this process's torch and OpenCV threads: put them back for the other tests."""
    before = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])


def run(*args):
    return ef.main([str(a) for a in args])


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(args, script='data/extract_features.py', ranks=2):
    """Run `script` under torchrun with `ranks` processes on this machine; (exit status, stdout + stderr)."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={ranks}', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}', script, *map(str, args)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    return done.returncode, done.stdout + done.stderr


def tree(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob('*')) if p.is_file()}


def extracted(capsys):
    """Names of the videos a run reported extracting ('[i/n] name: ...' lines)."""
    out = capsys.readouterr().out
    return sorted(line.split('] ')[1].split(':')[0] for line in out.splitlines()
                  if '] ' in line and ' frames -> ' in line)


def test_balanced_split_longest_first_to_the_least_loaded():
    assert shards.balanced_split([103, 50, 21, 77, 33], 2) == [0, 1, 1, 1, 0]   # loads 136 and 148
    assert shards.balanced_split([5, 5, 5, 5], 3) == [0, 1, 2, 0]                # ties: the lowest rank
    assert shards.balanced_split([], 4) == []
    owners = shards.balanced_split(list(range(1, 101)), 4)
    loads = [sum(w for w, o in zip(range(1, 101), owners) if o == r) for r in range(4)]
    assert max(loads) - min(loads) <= 100 and sum(loads) == 5050


def test_shard_options():
    assert shards.parse_shard('1/3') == shards.Shard(1, 3)
    for bad in ('3/3', '-1/2', '1', 'a/b'):
        with pytest.raises(ValueError, match='--shard'):
            shards.parse_shard(bad)
    env = dict(RANK='3', WORLD_SIZE='4', LOCAL_RANK='1', LOCAL_WORLD_SIZE='2')
    assert shards.from_environment(env) == shards.Shard(3, 4, 1, 2, torchrun=True)
    assert shards.from_environment({}) is None


def test_torchrun_ranks_write_what_one_process_writes(videos, tmp_path):
    one, two = tmp_path / 'one', tmp_path / 'two'
    assert run(videos, '--split', 'val', '--out', one, *I3D) == 0
    status, log = torchrun([videos, '--split', 'val', '--out', two, *I3D])
    assert status == 0, log
    # Each video extracted once, by the rank the frame counts give it; one summary, from rank 0.
    for name, rank in {'a': 1, 'b': 0, 'c': 1, 'd': 1, 'e': 0}.items():
        assert log.count(f'] {name}: ') == 1 and f'rank {rank}: ' in log.split(f'] {name}: ')[0].splitlines()[-1]
    assert log.count('done: 5 of 5 videos') == 1
    want = tree(one)
    assert sorted(want) == sorted(f'{d}/{n}.{ext}' for d in ('val/spatialDataXi3d', 'val/temporalDataXi3d',
                                                               'i3d_features') for n in LENGTHS
                                  for ext in ('npy', 'json')) + ['val/video_info.csv']
    assert tree(two) == want   # features byte for byte, sidecars, table, I3D-layout files


def test_a_killed_rank_leaves_nothing_that_looks_finished(videos, tmp_path, capsys):
    out = tmp_path / 'feat'
    runner = tmp_path / 'dying_extract.py'
    runner.write_text(DYING_RUNNER.format(repo=str(REPO), victim='c'))
    status, log = torchrun([videos, '--split', 'val', '--out', out, *TINY], script=runner)
    assert status != 0   # rank 1 died on c (after a); torchrun stopped rank 0 wherever it was
    sdir, tdir = out / 'val' / 'spatialDataXtiny', out / 'val' / 'temporalDataXtiny'
    assert (sdir / 'c.npy').exists() and not (sdir / 'c.json').exists()
    finished = {n for n in LENGTHS if (sdir / f'{n}.json').exists() and (tdir / f'{n}.json').exists()}
    assert 'a' in finished and not {'c', 'd'} & finished
    for d in (sdir, tdir):   # every file with a sidecar is whole
        for doc in d.glob('*.json'):
            assert np.load(doc.with_suffix('.npy')).shape[0] == feature_files.read_sidecar(
                str(doc.with_suffix('.npy')))['steps']
    assert run(videos, '--split', 'val', '--out', out, *TINY) == 0
    assert extracted(capsys) == sorted(set(LENGTHS) - finished)   # only what was missing
    assert not [p for p in out.rglob('.*.tmp')]                    # the killed writers' temporaries are gone
    clean = tmp_path / 'clean'
    assert run(videos, '--split', 'val', '--out', clean, *TINY) == 0
    assert tree(out) == tree(clean)


def test_shards_equal_one_run_and_the_table_is_completed_from_sidecars(videos, tmp_path, capsys):
    one, parts = tmp_path / 'one', tmp_path / 'parts'
    assert run(videos, '--split', 'val', '--out', one, *TINY) == 0
    assert run(videos, '--split', 'val', '--out', parts, *TINY, '--shard', '0/2') == 0
    capsys.readouterr()
    assert sorted(pd.read_csv(parts / 'val' / 'video_info.csv').video) == ['b', 'e']   # what is finished so far
    assert run(videos, '--split', 'val', '--out', parts, *TINY, '--shard', '1/2') == 0
    assert extracted(capsys) == ['a', 'c', 'd']
    assert tree(parts) == tree(one)
    (parts / 'val' / 'video_info.csv').unlink()
    assert run(videos, '--split', 'val', '--out', parts, *TINY, '--summary-only') == 0
    assert extracted(capsys) == []
    assert tree(parts) == tree(one)
    with pytest.raises(SystemExit, match='--shard 2/2: need 0 <= i < n'):
        run(videos, '--split', 'val', '--out', parts, *TINY, '--shard', '2/2')
