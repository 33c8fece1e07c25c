"""The decision log's durability: whole lines only, under several writing processes, across
rotation (moved + SIGHUP, copytruncate), and a failing write said once and refused.

Real processes write the same file at once (the kernel's O_APPEND guarantee is what is tested,
not a lock in one process); placeholder records, so no schema check (any_records).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from geogate.proxy import decision_log
from geogate.proxy.decision_log import DecisionLog
from geogate.proxy.decision_log import LogUnwritable

pytestmark = pytest.mark.any_records

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys
    from geogate.proxy.decision_log import DecisionLog
    path, who, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sizes = (100, 5000, 70000, 300)  # short, > 4 KiB (PIPE_BUF), > 64 KiB
    log = DecisionLog(path)
    for n in range(count):
        size = sizes[n % len(sizes)]
        log.write({"who": who, "n": n, "pad": chr(ord("a") + who) * size})
    log.close()
""")


def _parse_all(paths: list[Path]) -> list[dict]:
    records = []
    for p in paths:
        data = p.read_bytes()
        assert b"\0" not in data, f"{p} has NUL bytes (a hole after a truncation)"
        assert data == b"" or data.endswith(b"\n"), f"{p} ends in a partial line"
        for line in data.split(b"\n")[:-1]:
            rec = json.loads(line)  # raises on a partial or interleaved line
            assert rec["pad"] == rec["pad"][0] * len(rec["pad"])
            records.append(rec)
    return records


def test_several_processes_write_whole_lines_across_rotation(tmp_path):
    path = tmp_path / "d.jsonl"
    writers, count = 4, 1500
    env = dict(os.environ, PYTHONPATH=str(ROOT / "addons"))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(count)], env=env)
             for w in range(writers)]
    rotated: list[Path] = []
    copies = 0
    try:
        while any(p.poll() is None for p in procs):
            if len(rotated) < 3:  # logrotate's default: move the file away (the writers notice)
                target = tmp_path / f"d.jsonl.{len(rotated) + 1}"
                if path.exists():
                    path.rename(target)
                    rotated.append(target)
            else:  # copytruncate: copy, then cut the file the writers keep open to zero
                copy = tmp_path / f"d.jsonl.copy{copies}"
                if path.exists():
                    with open(path, "rb") as src, open(copy, "wb") as dst:
                        dst.write(src.read())
                    os.truncate(path, 0)
                    copies += 1
            time.sleep(0.05)
    finally:
        for p in procs:
            assert p.wait(120) == 0
    assert rotated and copies, "no rotation happened while the writers ran; the test proved nothing"
    # copytruncate loses what was written between the copy and the cut (that is its nature) and
    # a copy can end inside a line being appended: only the live file and the moved files must
    # hold exactly whole lines; the copies must hold whole lines up to their last newline.
    records = _parse_all([path, *rotated])
    for i in range(copies):
        data = (tmp_path / f"d.jsonl.copy{i}").read_bytes()
        assert b"\0" not in data
        for line in data.split(b"\n")[:-1]:
            json.loads(line)
    seen = {(r["who"], r["n"]) for r in records}
    assert len(seen) == len(records), "a record was written twice"
    assert {w for w, _n in seen} == set(range(writers))


def test_copytruncate_next_line_starts_at_zero(tmp_path):
    path = tmp_path / "d.jsonl"
    log = DecisionLog(str(path))
    for n in range(50):
        log.write({"n": n, "pad": "x" * 1000})
    os.truncate(path, 0)  # logrotate copytruncate: same inode, the writer is not told
    log.write({"n": "after"})
    assert path.read_bytes() == b'{"n":"after"}\n'  # no hole of NUL bytes before it
    log.close()


def test_sighup_reopen_and_moved_file(tmp_path):
    path = tmp_path / "d.jsonl"
    log = DecisionLog(str(path))
    log.write({"n": 1})
    path.rename(tmp_path / "old")
    log.write({"n": 2})  # noticed without a signal
    (tmp_path / "old2").write_bytes(path.read_bytes())
    path.unlink()
    path.write_text("")  # a new file under the name: same path, new inode
    log.reopen()
    log.write({"n": 3})
    assert path.read_text() == '{"n":3}\n'
    assert (tmp_path / "old").read_text() == '{"n":1}\n'
    log.close()


def test_a_short_write_is_taken_back_and_refused(tmp_path, monkeypatch, caplog):
    """A disk that fills up within a line: the piece written is removed, the record is refused."""
    path = tmp_path / "d.jsonl"
    log = DecisionLog(str(path))
    log.write({"n": 1})
    real_write = os.write

    def short(fd, data):
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(decision_log.os, "write", short)
    caplog.set_level(logging.INFO, logger="geogate")
    with pytest.raises(LogUnwritable, match="No space left"):
        log.write({"n": 2, "pad": "y" * 10000})
    assert path.read_text() == '{"n":1}\n'
    monkeypatch.setattr(decision_log.os, "write", real_write)
    log.write({"n": 3})
    assert path.read_text() == '{"n":1}\n{"n":3}\n'
    log.close()


def test_a_failing_disk_is_said_once_and_its_recovery_once(tmp_path, monkeypatch, caplog):
    path = tmp_path / "d.jsonl"
    log = DecisionLog(str(path))
    real_write = os.write
    full = True

    def write(fd, data):
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(decision_log.os, "write", write)
    caplog.set_level(logging.INFO, logger="geogate")
    for n in range(5):
        with pytest.raises(LogUnwritable):
            log.write({"n": n})
    full = False
    for n in range(3):
        log.write({"n": n})
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "cannot write the decision log" in m]) == 1, lines
    assert len([m for m in lines if "written again" in m]) == 1, lines
    assert "No space left on device" in lines[0] and "refused" in lines[0]
    assert path.read_text().count("\n") == 3
    log.close()


def test_interrupted_write_is_retried(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    log = DecisionLog(str(path))
    real_write = os.write
    interrupts = [1, 1]

    def write(fd, data):
        if interrupts:
            interrupts.pop()
            raise InterruptedError(errno.EINTR, "Interrupted system call")
        return real_write(fd, data)

    monkeypatch.setattr(decision_log.os, "write", write)
    log.write({"n": 1})
    assert path.read_text() == '{"n":1}\n'
    log.close()
