"""`geogate gateway run`: the rules in place, forwarding on, the proxy running, all kept in step.

Order at start: sets built and applied (one nft transaction), the routing latch installed, only
then forwarding turned on, then the transparent proxy started. While running, three threads:
- the watchdog checks every `watch_interval` seconds that the table (same handle) and the latch
  are there, and puts back what is missing at once, loudly (the latch blocks in the meantime);
- the file watcher rebuilds the sets when the policy or a database changes (settled content,
  a new sha256) and swaps them in one transaction; a file that does not load leaves the sets
  that are live in place, and says so;
- the NFLOG reader turns refused flows into decision records (receipts.py) and counts new
  flows, allowed and refused, per rule and country (flowcount.py), beside the kernel's counters.
After a flush the table comes back in two steps: at once a holding table that lets the flows
the sets allowed go on and refuses anything new (ruleset.holding), then the full sets: each set
by an nft process of its own, in parallel, then the chains in one small transaction (ruleset.Staged).
Stopping leaves the rules in place (the LAN stays judged, the proxied ports refused);
`geogate gateway down` removes them.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import IO
from typing import Any
from typing import Callable

from geogate.core.errors import GeogateError
from geogate.core.lookup import FactsSource
from geogate.gateway import kernel
from geogate.gateway import ruleset
from geogate.gateway import sets
from geogate.gateway.flowcount import FlowCounts
from geogate.gateway.flowcount import FlowVerdicts
from geogate.gateway.nflog import NflogSocket
from geogate.gateway.nflog import Refused
from geogate.gateway.receipts import AllowedReceipts
from geogate.gateway.receipts import JsonLines
from geogate.gateway.receipts import Receipts
from geogate.policy.loader import load_policy
from geogate.policy.state import GateState
from geogate.policy.state import default_policy_path
from geogate.policy.state import named_database_files

DEFAULT_STATE_FILE = "/run/geogate/gateway.json"
_PROXY_POLICY = re.compile(r"policy \S+ \((?:[^,]*, )?sha256 ([0-9a-f]{12}(?:[0-9a-f]{52})?)\)")
TABLE_POLL = 0.05  # seconds between the watchdog's looks for the table (the latch: Options.watch_interval)
PROXY_SHA_ENV = "GEOGATE_LOG_SHA256"  # set to "full" for the proxy child: it names whole hashes


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork: the child only calls it


def _die_with_parent() -> None:
    """In the proxy child: end with the gateway, however it ends (PR_SET_PDEATHSIG)."""
    _PRCTL(1, signal.SIGTERM)


def _proxy_child(gid: int | None) -> Callable[[], None]:
    """In the proxy child: end with the gateway; with --judge-host, run with the group that the
    output chain exempts (the user stays root: the files it reads are root's)."""
    def setup() -> None:
        _die_with_parent()
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
    return setup


def proxy_env() -> dict[str, str]:
    return dict(os.environ, **{PROXY_SHA_ENV: "full"})


def state_file_path() -> Path:
    return Path(os.environ.get("GEOGATE_GATEWAY_STATE") or DEFAULT_STATE_FILE)


def _stamp(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class Options:
    policy: str | None
    dbs: list[str]
    log: str | None
    proxy_argv: list[str] | None  # the transparent proxy (mitmdump ...), None: no proxy
    dns: dict | None = None  # `--dns`: port, name servers, blocked answers (said in the state file)
    watch_interval: float = 0.25
    file_interval: float = 0.5
    settle: float = 0.3
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT
    log_allowed: bool = False  # a decision record for each new allowed kernel flow
    count_interval: float = 1.0  # the kernel's flow counters are read this often


class Gateway:
    def __init__(self, config: ruleset.GatewayConfig, options: Options, state: GateState,
                 say: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.options = options
        self.state = state
        self.say = say or (lambda line: print(f"geogate: {line}", flush=True))
        self.lock = threading.RLock()  # one nft transaction at a time; state and sets swap together
        self.stopping = threading.Event()
        self.state_lock = threading.Lock()
        # the sets are built here and put in the kernel by start(): there are always sets to
        # compare a reload with, to name in a receipt and to put back if the table goes
        self.generations = itertools.count(1)  # each ruleset stamps the flows it allows with its own
        self.staged: dict[int, ruleset.Staged] = {}  # the live ruleset in steps, by generation (_restore_sets)
        self.dbpieces, self.kernel_sets, self.text, self.text_generation = self._build(state, None)
        self.built_stale = state.limit.stale(time.time())  # what the sets were built with (see _watch_files)
        self.handle: int | None = None  # the table's handle once it is in the kernel
        self.proxy: subprocess.Popen | None = None
        self.proxy_sha: str | None = None
        self.log = JsonLines(options.log) if options.log else None
        self.receipts = Receipts(lambda: self.state, self._write, lambda: self.kernel_sets.policy_sha256)
        self.allowed_receipts = (AllowedReceipts(lambda: self.state, self._write, lambda: self.kernel_sets.policy_sha256)
                                 if options.log_allowed else None)
        self.counts = FlowCounts()
        self.verdicts = FlowVerdicts(lambda: self.state)
        self.restores = 0
        self.last_restore: dict | None = None
        self.threads: list[threading.Thread] = []
        self.metrics: Any = None  # a metrics.families.Metrics with --metrics
        self.metrics_server: Any = None

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.options.metrics is not None:
            self._start_metrics(self.options.metrics)
        self._install(self.state, self.dbpieces, self.kernel_sets, self.text, self.text_generation, old_notes=None)
        kernel.install_latch(self.config)
        kernel.set_forwarding(True)
        ports = ", ".join(map(str, self.config.tcp_ports))
        self.say(f"forwarding on for {', '.join(self.config.lan)}; every other packet from the LAN is judged by the "
                 f"kernel, TCP ports {ports} by the proxy on :{self.config.proxy_port}")
        if self.options.dns:
            self.say(dns_line(self.options.dns))
        self.nflog = self._nflog(self.config.log_group, "refused flows are not recorded")
        self.flowlog = self._nflog(self.config.flow_group, "allowed flows are counted only in total")
        if self.options.proxy_argv:
            self._start_proxy(self.options.proxy_argv)
        for target, name in ((self._watchdog, "watchdog"), (self._watch_files, "files"), (self._read_nflog, "nflog"),
                             (self._count, "counts")):
            t = threading.Thread(target=target, name=f"geogate-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        self._write_state()

    def _nflog(self, group: int, without: str) -> NflogSocket | None:
        try:
            return NflogSocket(group)
        except OSError as e:
            self.say(f"WARNING: cannot read NFLOG group {group} ({e}); {without}")
            return None

    def _start_metrics(self, address: tuple[str, int]) -> None:
        """One endpoint for the whole gateway: the kernel counters, and the sum of what this
        process and its proxy (one mitmdump, or a supervisor's workers) count in a shared
        directory (prometheus_client's multiprocess mode); the proxy serves no endpoint itself."""
        from geogate.metrics.families import Metrics  # prometheus_client only when asked for
        from geogate.metrics.kernel import KernelCollector
        from geogate.metrics.serve import SharedMetrics

        self.metrics_server = SharedMetrics(address, KernelCollector(self.metrics_counters))
        self.metrics = Metrics()  # after SharedMetrics: it writes to the shared directory
        self.metrics.in_force(self.state.policy.ref, self.state.databases.infos, self.state.limit)

    def _build(self, state: GateState,
               reuse: sets.DatabasePieces | None) -> tuple[sets.DatabasePieces, sets.KernelSets, str, int]:
        """The sets of `state`, their ruleset and its generation; the database walk of `reuse`
        when the databases are the same."""
        dbshas = tuple(i.sha256 for i in state.databases.infos)
        if reuse is None or tuple(i.sha256 for i in reuse.databases.infos) != dbshas:
            pieces = sets.DatabasePieces(state)
        else:
            pieces = reuse
            pieces.databases = state.databases
        ks = sets.build(state, pieces)
        generation = next(self.generations)
        text, staged = ruleset.render_staged(ks, self.config, generation)
        self.staged[generation] = staged  # for _restore_sets; _install keeps the live one only
        return pieces, ks, text, generation

    def _apply(self, state: GateState) -> None:
        pieces, ks, text, generation = self._build(state, self.dbpieces)
        self._install(state, pieces, ks, text, generation, old_notes=self.kernel_sets.notes)

    def _install(self, state: GateState, pieces: sets.DatabasePieces, ks: sets.KernelSets, text: str,
                 generation: int, old_notes: list[str] | None) -> None:
        """One nft transaction; what it put in the kernel becomes the gateway's state."""
        first = old_notes is None
        with self.lock:
            before = kernel.counters() if self.handle is not None else None
            kernel.nft(text)
            if before is not None:
                self.counts.table_replaced(before)  # the flows counted between the read and the commit are not
            self.handle = kernel.table_handle()
            self.state, self.kernel_sets, self.text, self.dbpieces = state, ks, text, pieces
            self.text_generation = generation
            self.staged = {g: st for g, st in self.staged.items() if g >= generation}
            # the sets hold the decisions of the moment: rebuilt when the databases pass geo.max_age
            self.built_stale = state.limit.stale(time.time())
        if self.metrics is not None:
            self.metrics.in_force(state.policy.ref, state.databases.infos, state.limit)
        counts = ks.element_counts()
        self.say(f"{'kernel sets' if first else 'kernel sets rebuilt'}: policy {ks.policy_name} "
                 f"(sha256 {ks.policy_sha256[:12]}), {counts['ipv4']} IPv4 and {counts['ipv6']} IPv6 blocked intervals, "
                 f"built in {ks.seconds:.1f} s")
        if ks.notes != old_notes:
            for note in ks.notes:
                self.say(f"kernel: {note}")
        self._write_state()

    # -- the proxy ------------------------------------------------------------------------------
    def _start_proxy(self, argv: list[str]) -> None:
        proc = self._spawn_proxy(argv)
        t = threading.Thread(target=self._keep_proxy, args=(proc, argv), name="geogate-proxy", daemon=True)
        t.start()
        self.threads.append(t)

    def _spawn_proxy(self, argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=proxy_env(),
                                text=True, bufsize=1,
                                preexec_fn=_proxy_child(self.config.proxy_gid if self.config.judge_host else None))
        if proc.stdout is None:  # stdout=PIPE always gives one; without it the proxy's policy is unknown
            proc.kill()
            raise GeogateError("no output pipe from the proxy")
        self.proxy = proc
        return proc

    def _keep_proxy(self, first: subprocess.Popen, argv: list[str]) -> None:
        """Reads the proxy's output and restarts it when it exits, from this one thread for good:
        PR_SET_PDEATHSIG fires when the thread that started a child ends, so a proxy restarted
        by a thread that then ended would be stopped at once."""
        proc: subprocess.Popen | None = first
        while True:
            if proc is not None and proc.stdout is not None:
                self._proxy_output(proc, proc.stdout)
            if self.stopping.wait(2):
                return
            try:
                proc = self._spawn_proxy(argv)
            except (OSError, GeogateError) as e:
                self.say(f"ERROR: cannot restart the proxy: {e}; trying again in 2 s")
                proc = None

    def _proxy_output(self, proc: subprocess.Popen, output: IO[str]) -> None:
        for line in output:
            line = line.rstrip("\n")
            m = _PROXY_POLICY.search(line)
            if m:
                # the whole hash (PROXY_SHA_ENV): status compares it with the kernel's as it is
                self.proxy_sha = m.group(1)
                self._write_state()
            print(f"[proxy] {line}", flush=True)
        proc.wait()
        if not self.stopping.is_set():
            held = " and ".join(([f"TCP ports {', '.join(map(str, self.config.tcp_ports))}"] if self.config.tcp_ports
                                 else []) + (["LAN DNS"] if self.options.dns else []))
            self.say(f"ERROR: the proxy exited ({proc.returncode}); {held} are refused until it is back; "
                     "restarting it in 2 s")
            self.proxy_sha = None
            self._write_state()

    # -- watching -------------------------------------------------------------------------------
    def _watchdog(self) -> None:
        """The table is looked for every TABLE_POLL seconds (one netlink dump, in process: a flush
        is met at once), the latch every watch_interval (`ip rule` and `ip route`, four processes)."""
        quick = min(TABLE_POLL, self.options.watch_interval)
        latch_checked = time.monotonic()
        while not self.stopping.wait(quick):
            try:
                if time.monotonic() - latch_checked < self.options.watch_interval and self._table_intact():
                    continue
                latch_checked = time.monotonic()
                if self._intact():
                    continue
                with self.lock:  # not in the middle of a swap (which changes the table's handle)
                    table_ok = kernel.table_handle() == self.handle and self.handle is not None
                    latch_ok = kernel.latch_present(self.config)
                if table_ok and latch_ok:
                    continue
                started = time.monotonic()
                parts = (("table inet geogate", table_ok), ("the routing latch", latch_ok))
                missing = " and ".join(what for what, ok in parts if not ok)
                held = ("nothing from the LAN is forwarded meanwhile (the latch)" if not table_ok
                        else "the table still judges every packet meanwhile")
                self.say(f"ALERT: {missing} gone (nft flush ruleset? ip rule flush?); {held}; restoring")
                detail = self._restore(table_ok, latch_ok, started)
                self.restores += 1
                self.say(f"ALERT: restored {missing} in {(time.monotonic() - started) * 1000:.0f} ms{detail}")
                self._write_state()
            except GeogateError as e:
                self.say(f"ERROR: restoring the gateway rules failed: {e}; retrying")

    def _restore(self, table_ok: bool, latch_ok: bool, started: float) -> str:
        """Put back what is missing: the holding table first (milliseconds: the flows the sets
        allowed go on, anything new is refused), the latch, then the full sets (_restore_sets:
        about a second with large sets). A failure leaves the handle unknown, so the next round
        starts over from the holding table."""
        with self.lock:
            detail = ""
            if not table_ok:
                self.handle = None
                self.counts.table_replaced(None)
                ks = self.kernel_sets
                kernel.nft(ruleset.holding(self.config, self.text_generation, ks.policy_sha256, ks.policy_name))
                holding_ms = (time.monotonic() - started) * 1000
                self.say(f"ALERT: holding table in place after {holding_ms:.0f} ms: flows the sets allowed go on, "
                         "anything new is refused until the sets are back")
            if not latch_ok:
                kernel.install_latch(self.config)
            if not table_ok:
                self._restore_sets()
                self.handle = kernel.table_handle()
                full_ms = (time.monotonic() - started) * 1000
                self.last_restore = {"holding_ms": round(holding_ms), "full_ms": round(full_ms)}
                detail = f" (the holding table after {holding_ms:.0f} ms, the full sets after {full_ms:.0f} ms)"
        return detail

    def _restore_sets(self) -> None:
        """The full ruleset on top of the holding table: each set loaded whole by an nft process
        of its own, in parallel, then the chains switched in one small transaction that refers
        only to those sets (nothing new passes before every set is complete). Without the steps
        of the live generation, the one transaction of a swap."""
        steps = self.staged.get(self.text_generation)
        if steps is None:
            kernel.nft(self.text)
            return
        kernel.nft_parallel(steps.sets)
        kernel.nft(steps.chains)

    def _table_intact(self) -> bool:
        with self.lock:
            handle = self.handle
        return handle is not None and kernel.table_handle() == handle

    def _intact(self) -> bool:
        with self.lock:
            handle = self.handle
        return handle is not None and kernel.table_handle() == handle and kernel.latch_present(self.config)

    def _paths(self, state: GateState | None = None) -> list[str]:
        """The policy and the databases to watch: what `--db` names now (a directory's new .mmdb
        files too, listed as the proxy's reload lists them), else the databases in use."""
        state = state or self.state
        dbs = named_database_files(self.options.dbs) if self.options.dbs else [i.path for i in state.databases.infos]
        return [state.policy.ref.path, *dbs]

    def _watch_files(self) -> None:
        stamps = {p: _stamp(p) for p in self._paths()}
        day = datetime.now(timezone.utc).date()
        while not self.stopping.wait(self.options.file_interval):
            seen = {p: _stamp(p) for p in self._paths()}  # a new file in a --db directory is a change
            new_day = self.kernel_sets.expiring and datetime.now(timezone.utc).date() != day
            if self.state.limit.stale(time.time()) != self.built_stale:
                self._stale_turned()
                continue
            if seen == stamps and not new_day:
                continue
            if seen != stamps:
                time.sleep(self.options.settle)
                if {p: _stamp(p) for p in self._paths()} != seen:
                    continue  # still being written: look again next round
            day = datetime.now(timezone.utc).date()
            databases_moved = seen.keys() != stamps.keys() or any(seen[p] != stamps[p] for p in list(seen)[1:])
            kind = "database" if databases_moved else "policy"
            try:
                new = self._load(reuse_databases=not databases_moved)
            except GeogateError as e:
                stamps = seen
                self._count_reload(kind, "failure")
                self.say(f"ERROR: reload failed, the kernel keeps the sets of policy {self.kernel_sets.policy_name} "
                         f"(sha256 {self.kernel_sets.policy_sha256[:12]}): {e}")
                continue
            stamps = {p: _stamp(p) for p in self._paths(new)}
            unchanged = (new.policy.ref.sha256 == self.kernel_sets.policy_sha256
                         and tuple(i.sha256 for i in new.databases.infos) == self.kernel_sets.databases)
            if unchanged and not new_day:
                continue  # touched, not changed
            try:
                self._apply(new)
            except GeogateError as e:
                self._count_reload(kind, "failure")
                self.say(f"ERROR: the new sets were refused, the old ones stay: {e}")
            else:
                self._count_reload(kind, "success")

    def _count_reload(self, kind: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.reloaded(kind, result)

    def _stale_turned(self) -> None:
        """The databases passed geo.max_age since the sets were built: said once, sets rebuilt."""
        f = self.state.freshness()
        self.say(f"WARNING: {f.warning}; geo.on_stale: {f.on_stale}, kernel sets rebuilt" if f.stale else
                 "the databases are within geo.max_age again; kernel sets rebuilt")
        try:
            self._apply(self.state)
        except GeogateError as e:
            self.say(f"ERROR: the new sets were refused, the old ones stay: {e}")
            self.built_stale = not self.built_stale  # said once: not tried again every round

    def _load(self, reuse_databases: bool) -> GateState:
        """The new state; with the databases in use when only the policy changed (opening and
        checking the bundled databases again costs seconds)."""
        if not reuse_databases:
            return GateState.load(self.options.policy, self.options.dbs or None)
        policy = load_policy(self.options.policy or default_policy_path())
        return GateState(policy, self.state.databases, FactsSource(self.state.databases))

    def _read_nflog(self) -> None:
        sockets = [s for s in (self.nflog, self.flowlog) if s is not None]
        if not sockets:
            return
        while not self.stopping.is_set():
            try:
                ready, _, _ = select.select(sockets, [], [], 0.5)
            except OSError as e:
                self.say(f"ERROR: reading NFLOG: {e}")
                time.sleep(0.5)
                continue
            for sock in ready:
                try:
                    packets = sock.read()
                except OSError as e:
                    if e.errno == errno.ENOBUFS:  # the kernel dropped messages: the counters still have them
                        self.counts.lost()
                        continue
                    self.say(f"ERROR: reading NFLOG: {e}")
                    time.sleep(0.5)
                    continue
                for packet in packets:
                    self._flow(packet, allowed=sock is self.flowlog)

    def _flow(self, packet: Refused, allowed: bool) -> None:
        """One logged first packet: counted under the engine's rule and country; a receipt for
        a refusal, and for an allowed flow with --log-allowed."""
        rule, country, engine_blocks = self.verdicts(packet)
        if allowed != (not engine_blocks):
            rule = "kernel"  # the sets decided otherwise than the policy loaded now (a swap)
        self.counts.add("allowed" if allowed else "blocked", rule, country, packet.protocol)
        if not allowed:
            self.receipts.refused(packet)
        elif self.allowed_receipts is not None:
            self.allowed_receipts.allowed(packet)

    def _count(self) -> None:
        """Reads the kernel's flow counters and writes the state when the counts moved."""
        last = None
        while not self.stopping.wait(self.options.count_interval):
            with self.lock:
                if self.handle is not None:
                    self.counts.kernel(kernel.counters())
            now = self.counts.snapshot()
            if now != last:
                last = now
                self._write_state()

    def _write(self, record: dict) -> None:
        """A receipt's decision record: written, and counted (mode "kernel")."""
        if self.log is not None:
            try:
                self.log.write(record)
            except OSError:
                if self.metrics is not None:
                    self.metrics.log_write_error()
                raise
        if self.metrics is not None:
            self.metrics.decided(record)

    def metrics_counters(self) -> dict:
        """The kernel side for geogate_gateway_* (read at each scrape; see metrics/kernel.py).
        Flow counts join once the daemon keeps them (`self.counts`, a FlowCounts: snapshot())."""
        counters: dict[str, object] = {"receipts_written": self.receipts.written,
                                       "receipts_suppressed": self.receipts.suppressed, "restores": self.restores}
        counts = getattr(self, "counts", None)
        if counts is not None:
            snap = counts.snapshot()
            counters["flows"] = {(action, rule, country): n for verdict, action in (("allowed", "allow"), ("blocked", "block"))
                                 for rule, per_country in snap.get(verdict, {}).items()
                                 for country, n in per_country.items()}
            if snap.get("kernel") is not None:
                counters["kernel_flows"] = {"allow": snap["kernel"]["allowed"], "block": snap["kernel"]["blocked"]}
        return counters

    # -- state ----------------------------------------------------------------------------------
    def _write_state(self) -> None:
        ks = self.kernel_sets
        receipts: dict = {"written": self.receipts.written, "suppressed": self.receipts.suppressed}
        if self.allowed_receipts is not None:
            receipts["allowed"] = {"written": self.allowed_receipts.written,
                                   "suppressed": self.allowed_receipts.suppressed}
        data = {
            "pid": os.getpid(),
            "lan": list(self.config.lan),
            "tcp_ports": list(self.config.tcp_ports),
            "proxy_port": self.config.proxy_port,
            "config": {"mark": self.config.mark, "route_table": self.config.route_table,
                       "rule_pref": self.config.rule_pref, "log_group": self.config.log_group,
                       "judge_host": self.config.judge_host},
            "kernel": {"policy_sha256": ks.policy_sha256, "policy": ks.policy_name, "elements": ks.element_counts(),
                       "build_seconds": round(ks.seconds, 3)},
            "proxy": {"policy_sha256": self.proxy_sha, "pid": self.proxy.pid if self.proxy else None},
            "restores": self.restores,
            "dns": self.options.dns,
            "last_restore": self.last_restore,
            "receipts": receipts,
            "flows": self.counts.snapshot(),
        }
        path = state_file_path()
        with self.state_lock:  # several threads write it
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".{os.getpid()}")
                tmp.write_text(json.dumps(data, indent=1) + "\n")
                tmp.replace(path)
            except OSError as e:
                self.say(f"WARNING: cannot write {path}: {e}")

    # -- run and stop ---------------------------------------------------------------------------
    def run_forever(self) -> int:
        done = threading.Event()

        def stop(_sig, _frame):
            done.set()

        def hup(_sig, _frame):
            if self.log is not None:
                self.log.reopen()
            if self.proxy is not None and self.proxy.poll() is None:
                self.proxy.send_signal(signal.SIGHUP)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        while not done.wait(1):
            pass
        self.stop()
        return 0

    def stop(self) -> None:
        self.stopping.set()
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
        if self.metrics_server is not None:  # after the proxy: it writes to the directory this removes
            self.metrics_server.close()
        self.say("stopped; the rules stay in place (LAN traffic stays judged, proxied ports are refused); "
                 "`geogate gateway down` removes them")
        sys.stdout.flush()


def dns_line(dns: dict) -> str:
    what = {"remove": "answer addresses the policy blocks are removed",
            "refuse": "an answer holding an address the policy blocks is refused"}.get(str(dns.get("blocked_answers")), "")
    return (f"DNS: LAN DNS (UDP and TCP port 53, to any address) answered by the proxy's DNS mode on "
            f":{dns.get('port')}, name servers {', '.join(dns.get('name_servers') or ()) or '-'} (a blocked one is never "
            f"asked); {what}")


def down(config: ruleset.GatewayConfig) -> None:
    """Forwarding off first, then the table and the latch."""
    kernel.set_forwarding(False)
    kernel.delete_table()
    kernel.remove_latch(config)
