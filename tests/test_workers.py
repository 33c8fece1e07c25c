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


@pytest.mark.any_records  # bare records: what is under test is that lines stay whole
def test_several_processes_appending_to_one_log_leave_whole_lines(tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "d.jsonl"
    writer = ("import sys; from geogate.proxy.decision_log import DecisionLog\n"
              "log = DecisionLog(sys.argv[1])\n"
              "for i in range(200): log.write({'event': 'decision', 'who': sys.argv[2], 'i': i, 'pad': 'x' * (i * 700)})\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(path), name]) for name in "abc"]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # a torn or interleaved line would not parse
    for name in "abc":
        assert [r["i"] for r in records if r["who"] == name] == list(range(200))


def test_the_ca_is_made_once_before_the_workers_and_an_existing_one_is_kept(tmp_path):
    from geogate.cli.run_proxy import make_ca_once

    confdir = tmp_path / "conf"
    make_ca_once(["--set", f"confdir={confdir}", "--set", "key_size=1024"])
    ca = confdir / "mitmproxy-ca.pem"
    first = ca.read_bytes()
    assert b"PRIVATE KEY" in first and (confdir / "mitmproxy-ca-cert.pem").exists()
    make_ca_once([f"--set=confdir={confdir}"])
    assert ca.read_bytes() == first


def test_worker_environment_is_the_supervisors_plus_extra_env_and_the_index(monkeypatch):
    from geogate.cli.workers import Supervisor

    monkeypatch.setenv("SOMETHING_OF_THE_USER", "kept")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    plain = Supervisor(2, [], [], [], "regular").worker_env(1)
    assert plain["SOMETHING_OF_THE_USER"] == "kept" and plain["GEOGATE_WORKER"] == "1/2"
    assert "PROMETHEUS_MULTIPROC_DIR" not in plain
    summed = Supervisor(2, [], [], [], "regular", extra_env={"PROMETHEUS_MULTIPROC_DIR": "/run/x"}).worker_env(0)
    assert summed["PROMETHEUS_MULTIPROC_DIR"] == "/run/x" and summed["GEOGATE_WORKER"] == "0/2"
