"""The pure parts of `--workers`: the count, a worker's index, what the supervisor says."""

from __future__ import annotations

import signal

import pytest

from geogate.cli.worker_count import parse_workers
from geogate.cli.workers import _untimed
from geogate.cli.workers import describe_exit
from geogate.core.errors import GeogateError
from geogate.proxy.worker import worker_index


@pytest.mark.parametrize("text, cores, expected", [
    ("1", 8, 1), ("2", 8, 2), (" 3 ", 8, 3), ("256", 1, 256), ("auto", 8, 8), ("AUTO", 2, 2), ("auto", 0, 1), (4, 1, 4),
])
def test_worker_counts(text, cores, expected):
    assert parse_workers(text, available=cores) == expected


@pytest.mark.parametrize("text", ["0", "-1", "257", "two", "1.5", "", "２", "auto2"])
def test_bad_worker_counts_are_refused_with_what_to_write(text):
    with pytest.raises(GeogateError, match=r"--workers .*: write a whole number from 1 to 256, or auto"):
        parse_workers(text, available=4)


def test_auto_is_the_cores_this_process_may_use():
    import os

    assert parse_workers("auto") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value, expected", [
    ("0/2", 0), ("1/2", 1), ("7/8", 7), ("0/1", None), ("2/2", None), ("", None), ("x/2", None), ("1", None),
])
def test_worker_index_only_when_one_of_several(value, expected):
    assert worker_index({"GEOGATE_WORKER": value}) == expected
    assert worker_index({}) is None


@pytest.mark.any_records  # a bare record: what is under test is the added field
def test_worker_log_names_the_worker_on_every_line(tmp_path):
    import json

    from geogate.proxy.worker import WorkerLog

    log = WorkerLog(str(tmp_path / "d.jsonl"), 1)
    log.write({"event": "decision", "action": "allow"})
    log.close()
    assert json.loads((tmp_path / "d.jsonl").read_text()) == {"event": "decision", "action": "allow", "worker": 1}


def test_exits_are_said_in_words():
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-200) == "was killed by signal 200"


def test_start_up_lines_of_several_workers_compare_without_their_time_of_day():
    assert _untimed("[10:15:21.786] HTTP(S) proxy listening at 127.0.0.1:1.") == \
        _untimed("[10:15:21.863] HTTP(S) proxy listening at 127.0.0.1:1.")
    assert _untimed("geogate: listening on x") == "geogate: listening on x"
