"""Hot reload (geogate.proxy.reload.LiveState): only a file its writer has finished is applied.

Real writers against the real watcher (inotify where the kernel has it), plus a fake clock for
the rules that are about time rather than about writers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from geogate.policy.loader import load_policy_text
from geogate.proxy.flows import make_request
from geogate.proxy.reload import Inotify
from geogate.proxy.reload import LiveState
from geogate.proxy.reload import Source
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import NETWORKS
from proxy_support import POLICY
from proxy_support import write_db
from proxy_support import write_policy

OLD_POLL_INTERVAL = 0.5  # the old watcher applied any file that held still this long
COMPLETE = POLICY.format(name="v2", mode="enforce", before="", settings="",
                         extra="  - name: no-de\n    action: block\n    countries: [DE]\n")
# A valid policy on its own, and far more permissive than either file: no rules at all.
PREFIX = COMPLETE[:COMPLETE.index("rules:")]

needs_inotify = pytest.mark.skipif(Inotify.open() is None, reason="no inotify here")


def blocked(live: LiveState, ip: str) -> bool:
    req = make_request(ip, 443, peername=("192.0.2.9", 40000), mode="regular", flow_id=None)
    return live.state.decide(req, [ipaddress.ip_address(ip)]).blocked


@pytest.fixture
def files(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(policy=write_policy(tmp_path / "policy.yaml"), db=write_db(tmp_path / "geo.mmdb"),
                           tmp=tmp_path)


def live_for(files, **kw) -> LiveState:
    return LiveState(Source(str(files.policy), (str(files.db),)), **kw)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_prefix_is_a_valid_and_more_permissive_policy():
    # what makes the writer test below mean something: applying the prefix would let KP through
    prefix = load_policy_text(PREFIX, "prefix.yaml")
    assert prefix.default == "allow" and not prefix.rules


@needs_inotify
async def test_writer_pausing_at_a_valid_prefix_is_never_applied(files, caplog):
    live = live_for(files)  # the default settle time
    pause = max(OLD_POLL_INTERVAL, live.settle) + 0.6
    closed = threading.Event()

    def writer() -> None:
        with open(files.policy, "w") as f:  # in place, like `cat > policy.yaml` or a careless script
            f.write(PREFIX)
            f.flush()
            time.sleep(pause)
            f.write(COMPLETE[len(PREFIX):])
        closed.set()

    caplog.set_level("INFO", logger="geogate")
    live.start()
    try:
        thread = threading.Thread(target=writer)
        thread.start()
        during: list[tuple[str, bool, bool]] = []
        while not closed.is_set():
            during.append((live.state.policy.name, blocked(live, BLOCKED_IP), blocked(live, ALLOWED_IP)))
            await asyncio.sleep(0.05)
        t_closed = time.monotonic()
        while live.state.policy.name != "v2" and time.monotonic() < t_closed + live.settle + 2:
            assert blocked(live, BLOCKED_IP)
            await asyncio.sleep(0.02)
        applied = time.monotonic() - t_closed
        thread.join()
    finally:
        live.stop()
    assert len(during) > pause / 0.05 / 2
    assert set(during) == {("test", True, False)}  # the old policy decided throughout the pause
    assert live.state.policy.name == "v2", "the complete file was not applied after close"
    assert live.settle - 0.1 <= applied < live.settle + 1.0
    assert blocked(live, BLOCKED_IP) and blocked(live, ALLOWED_IP)
    reloads = [r.getMessage() for r in caplog.records if "reloaded policy" in r.getMessage()]
    assert len(reloads) == 1 and "reloaded policy v2" in reloads[0]  # the complete file, nothing in between


@needs_inotify
async def test_atomic_rename_is_applied_promptly(files):
    live = live_for(files)
    live.start()
    try:
        await asyncio.sleep(0.1)
        tmp = files.policy.with_name("policy.yaml.new")
        tmp.write_text(COMPLETE)
        os.replace(tmp, files.policy)
        t0 = time.monotonic()
        while live.state.policy.name != "v2" and time.monotonic() < t0 + 5:
            await asyncio.sleep(0.02)
        took = time.monotonic() - t0
    finally:
        live.stop()
    assert live.state.policy.name == "v2"
    assert took < live.settle + 0.5, f"took {took:.2f}s"
    assert blocked(live, ALLOWED_IP)


@needs_inotify
async def test_a_bad_complete_file_keeps_the_last_good_policy_loudly(files, caplog):
    live = live_for(files, settle=0.2)
    live.start()
    try:
        with caplog.at_level(logging.ERROR, logger="geogate"):
            with open(files.policy, "w") as f:
                f.write(COMPLETE.replace("default: allow", "default: alow"))
            for _ in range(100):
                await asyncio.sleep(0.02)
                if any("reload failed" in r.getMessage() for r in caplog.records):
                    break
            await asyncio.sleep(live.settle + 2 * live.interval)  # more looks: still one line
    finally:
        live.stop()
    errors = [r for r in caplog.records if "reload failed" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert "still using policy test" in errors[0].getMessage() and "alow" in errors[0].getMessage()
    assert live.state.policy.name == "test" and blocked(live, BLOCKED_IP)


@needs_inotify
async def test_database_written_in_place_with_a_pause_waits_for_close(files, caplog):
    live = live_for(files)
    # the new database says 127.0.2.0/24 is DE: once applied, BLOCKED_IP is allowed
    new = write_db(files.tmp / "next.mmdb", {**NETWORKS, "127.0.2.0/24": "DE"}).read_bytes()
    half = len(new) // 2
    closed = threading.Event()

    def writer() -> None:
        with open(files.db, "wb") as f:
            f.write(new[:half])
            f.flush()
            time.sleep(max(OLD_POLL_INTERVAL, live.settle) + 0.6)
            f.write(new[half:])
        closed.set()

    live.start()
    try:
        with caplog.at_level(logging.INFO, logger="geogate"):
            thread = threading.Thread(target=writer)
            thread.start()
            while not closed.is_set():
                assert blocked(live, BLOCKED_IP)
                await asyncio.sleep(0.05)
            t_closed = time.monotonic()
            while blocked(live, BLOCKED_IP) and time.monotonic() < t_closed + live.settle + 2:
                await asyncio.sleep(0.02)
            thread.join()
    finally:
        live.stop()
    assert not blocked(live, BLOCKED_IP), "the complete database was not applied after close"
    messages = [r.getMessage() for r in caplog.records]
    assert not any("reload failed" in m or "missing" in m for m in messages)  # the half file was never tried
    assert sum("reloaded policy" in m for m in messages) == 1


@needs_inotify
def test_an_open_writer_is_never_applied_however_long_it_holds_still(files):
    clock = FakeClock()
    live = live_for(files, clock=clock)
    try:
        f = open(files.policy, "w")
        f.write(COMPLETE)  # the whole file, but nothing says the writer is done
        f.flush()
        for _ in range(120):
            clock.now += 0.5
            assert not live.poll()
        f.close()
        assert not live.poll()  # closed just now: the settle time starts
        clock.now += live.settle - 0.1
        assert not live.poll()
        clock.now += 0.2
        assert live.poll() and live.state.policy.name == "v2"
    finally:
        live.stop()


@needs_inotify
def test_content_changed_during_the_settle_time_starts_it_again(files):
    clock = FakeClock()
    live = live_for(files, clock=clock)
    try:
        write_policy(files.policy, name="v2")
        assert not live.poll()
        clock.now += live.settle / 2
        write_policy(files.policy, name="v3")
        assert not live.poll()
        clock.now += live.settle / 2 + 0.1
        assert not live.poll()  # v2 settled, but v3 replaced it half-way
        clock.now += live.settle / 2
        assert live.poll() and live.state.policy.name == "v3"
    finally:
        live.stop()


def test_without_inotify_a_change_waits_the_longer_settle_time(files):
    clock = FakeClock()
    live = live_for(files, clock=clock, use_inotify=False)
    assert live.poll_settle >= 5 * live.settle
    with open(files.policy, "w") as f:
        f.write(COMPLETE)
    t0 = clock.now
    while clock.now < t0 + live.poll_settle:
        assert not live.poll(), f"applied {clock.now - t0:.1f}s after a polled change"
        clock.now += live.interval
    clock.now += live.interval
    assert live.poll() and live.state.policy.name == "v2"


@needs_inotify
def test_same_content_written_again_is_not_a_reload(files):
    clock = FakeClock()
    live = live_for(files, clock=clock)
    loaded = live.state
    try:
        write_policy(files.policy)  # byte for byte what is loaded, on a new inode
        for _ in range(10):
            clock.now += 0.5
            assert not live.poll()
        assert live.state is loaded
    finally:
        live.stop()


@needs_inotify
def test_missing_database_fails_closed_at_once(files):
    clock = FakeClock()
    live = live_for(files, clock=clock)
    try:
        saved = files.db.read_bytes()
        files.db.unlink()
        assert live.poll() and blocked(live, ALLOWED_IP)  # no settle time for the safe direction
        files.db.write_bytes(saved)
        assert not live.poll() and blocked(live, ALLOWED_IP)
        clock.now += live.settle + 0.1
        assert live.poll() and not blocked(live, ALLOWED_IP)
    finally:
        live.stop()
