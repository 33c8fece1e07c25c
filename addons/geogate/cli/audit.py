"""`geogate audit FILE...`: read recordings, decide every flow, write a report.

Exit status: 0 done; 1 with --fail-on-block when a flow would be blocked (with --against: when
the second policy newly blocks or newly flags one); 2 when an input could not be read to its end (the report
is still written, marked incomplete) or on a user error (one line on stderr, no report).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from typing import TextIO

from geogate.audit import html_report
from geogate.audit import text_report
from geogate.audit.aggregate import STRICTER
from geogate.audit.aggregate import Changes
from geogate.audit.auditor import Audit
from geogate.audit.auditor import AuditResult
from geogate.audit.csv_report import CsvReport
from geogate.audit.evaluate import NameLookup
from geogate.audit.json_report import JsonLinesReport
from geogate.audit.progress import Progress
from geogate.audit.readers import open_input
from geogate.audit.run import run_inputs
from geogate.core.errors import GeogateError
from geogate.policy.state import GateState

EXIT_BLOCKED = 1
EXIT_ERROR = 2


@contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """stdout, or a file that appears only once it is complete (written beside it, then renamed)."""
    if not path or path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise GeogateError(f"-o {path}: is a directory; give a file name")
    if target.exists() and not target.is_file():
        # /dev/null, a FIFO, a terminal: write straight to it; renaming over it would replace it
        try:
            out = open(target, "w", encoding="utf-8", newline="")
        except OSError as e:
            raise GeogateError(f"-o {path}: cannot write ({e.strerror or e})") from None
        with out:
            yield out
        return
    if not target.parent.is_dir():
        raise GeogateError(f"-o {path}: directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise GeogateError(f"-o {path}: cannot write there ({e.strerror or e})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is an ordinary file
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _streaming_sink(fmt: str, out: TextIO, against: bool):
    if fmt == "json":
        return JsonLinesReport(out)
    if fmt == "csv":
        return CsvReport(out, against=against)
    return None


def _exit_status(result: AuditResult, fail_on_block: bool) -> int:
    if not result.complete:
        return EXIT_ERROR
    if fail_on_block:
        counts = result.counts
        if isinstance(counts, Changes):
            if any(counts.changed[change].flows for change in STRICTER):
                return EXIT_BLOCKED
        elif counts.totals.would_block:
            return EXIT_BLOCKED
    return 0


def audit(args: argparse.Namespace) -> int:
    inputs = [open_input(path) for path in args.files]  # user errors surface before any work
    if args.output and args.output != "-" and Path(args.output).exists():
        out_real = Path(args.output).resolve()
        if any(Path(i.path).resolve() == out_real for i in inputs):
            raise GeogateError(f"-o {args.output}: is one of the inputs; refusing to overwrite the recording")
    state = GateState.load(args.policy, args.db)
    for w in state.warnings:
        print(w, file=sys.stderr)
    against = GateState.load(args.against, args.db) if getattr(args, "against", None) else None
    lookup = NameLookup() if args.resolve else None
    try:
        with _output(args.output) as out:
            sink = _streaming_sink(args.format, out, against is not None)
            audit_run = Audit(state, against=against, lookup=lookup, sink=sink)
            progress = Progress(sum(i.size for i in inputs))
            summaries = run_inputs(audit_run, inputs, progress)
            result = audit_run.result(summaries)
            if sink is not None:
                sink.finish(result)
            elif args.format == "html":
                out.write(html_report.render(result))
            else:
                out.write(text_report.render(result))
    finally:
        if lookup is not None:
            lookup.close()
    for p in result.problems:
        print(f"geogate: {p.text()}", file=sys.stderr)
    if result.problems_unlisted:
        print(f"geogate: ... and {result.problems_unlisted} more problems", file=sys.stderr)
    if not result.complete:
        print("geogate: the report is incomplete: it covers only the flows that could be read", file=sys.stderr)
    return _exit_status(result, args.fail_on_block)
