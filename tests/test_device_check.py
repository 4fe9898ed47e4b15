"""bench/device_check.py: a stage that fails, raises or runs out of time is a row of the table,
and the stages after it still run."""
import importlib.util
import os
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / 'bench' / 'device_check.py'


@pytest.fixture
def device_check():
    spec = importlib.util.spec_from_file_location('device_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_command_past_its_limit_is_killed_with_what_it_started(tmp_path, device_check):
    log = tmp_path / 'slow.log'
    t0 = time.time()
    status, seconds = device_check.run_logged(['bash', '-c', 'echo started; sleep 30 & sleep 30'], 1, str(log))
    assert status is None and time.time() - t0 < 10 and seconds >= 1
    assert 'started' in log.read_text()
    status, _ = device_check.run_logged(['bash', '-c', 'exit 3'], 10, str(log))
    assert status == 3


def test_every_stage_has_its_rows_after_a_failing_one(tmp_path, device_check, monkeypatch, capsys):
    def timed_out(ctx):
        return [device_check.failure('slow', 'a command', None, 2.0, ctx['log']('slow'), 2)]

    def raises(ctx):
        raise RuntimeError('broken stage')

    def measures(ctx):
        return [('fine', 'a measurement', '12.5', 'windows/s', 3.0)]
    monkeypatch.setattr(device_check, 'STAGES', [('slow', timed_out), ('broken', raises), ('fine', measures)])
    assert device_check.main(['--small', '--device', 'cpu', '--out', str(tmp_path)]) == 1
    table = (tmp_path / 'device_check.txt').read_text()
    assert table in capsys.readouterr().out
    lines = table.splitlines()
    assert lines[1].split() == ['stage', 'what', 'figure', 'unit', 'seconds']
    rows = {line.split()[0]: line for line in lines[3:]}
    assert list(rows) == ['slow', 'broken', 'fine', 'total']
    assert 'ran past its 2 s, see slow.log' in rows['slow'] and 'FAILED' in rows['slow']
    assert 'RuntimeError: broken stage' in rows['broken'] and 'FAILED' in rows['broken']
    assert rows['fine'].split()[-3:] == ['12.5', 'windows/s', '3.0']
    assert os.path.isdir(tmp_path / 'device_check_logs')
