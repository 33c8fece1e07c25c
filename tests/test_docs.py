"""The documentation is navigable and its commands still run.

Convention (docs/testing.md): a fenced block whose info string is `console` is runnable. Each of its
lines starting `$ ` is a command (a trailing backslash continues it on the next line); the command
must exit 0, or N when it ends in the shell comment `# exit N`. Other lines are sample output and
are not compared. Commands run with bash from the repository root, `.venv/bin` first on PATH, a
private cache directory and a resolver that can reach nothing but 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 260

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
EXIT = re.compile(r"\s#\s*exit\s+(\d+)\s*$")
# Commands that listen, run for long, or reach the network have no place in a runnable block.
NOT_RUNNABLE = re.compile(r"\bmake\s+run\b|\bgeogate\s+run\b|\bdb\s+update\b|\bcurl\b|\bwget\b|\bnpm\b")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|root|home|tmp|Users)/")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str
    status: int

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(info string, line number of the first line inside, lines) of every fenced block."""
    return [(info, start + 2, lines) for info, start, lines, _end in _blocks(text.splitlines())]


def prose(text: str) -> str:
    """The text outside fenced blocks: what a reader follows as links, not samples."""
    lines = text.splitlines()
    inside = {i for _info, start, _lines, end in _blocks(lines) for i in range(start, end + 1)}
    return "\n".join(line for i, line in enumerate(lines) if i not in inside)


def _blocks(lines: list[str]) -> list[tuple[str, int, list[str], int]]:
    """(info, index of the opening fence, lines inside, index of the closing fence) per block;
    a block closes at a fence of the same character at least as long, as CommonMark says."""
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, opening, body = m["fence"], m["info"].strip(), i, []
        i += 1
        while i < len(lines) and not _closes(lines[i], fence):
            body.append(lines[i])
            i += 1
        blocks.append((info, opening, body, i))
        i += 1
    return blocks


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def runnable_commands(text: str, page: str) -> list[Command]:
    found = []
    for info, start, body in fenced_blocks(text):
        if info.split()[:1] != ["console"]:
            continue
        n = 0
        while n < len(body):
            if not body[n].startswith("$ "):
                n += 1
                continue
            first, parts = n, [body[n][2:]]
            while parts[-1].endswith("\\") and n + 1 < len(body):
                parts[-1] = parts[-1][:-1]
                n += 1
                parts.append(body[n].strip())
            command = " ".join(p.strip() for p in parts)
            m = EXIT.search(command)
            found.append(Command(page, start + first, command, int(m[1]) if m else 0))
            n += 1
    return found


def all_commands() -> list[Command]:
    return [c for p in PAGES for c in runnable_commands(p.read_text(), str(p.relative_to(ROOT)))]


COMMANDS = all_commands()


# -- the convention itself -----------------------------------------------------------------------

SAMPLE = """\
Text.

```console
$ geogate groups
@eea   as of 2026-01-27  AT ...
$ geogate audit x.har \\
      --fail-on-block   # exit 1
```

```text
$ make run
```

````markdown
```console
$ not-a-command-but-an-example
```
````
"""


def test_the_parser_finds_commands_continuations_and_statuses_in_console_blocks_only():
    found = runnable_commands(SAMPLE, "sample.md")
    assert [(c.line, c.text, c.status) for c in found] == [
        (4, "geogate groups", 0),
        (6, "geogate audit x.har --fail-on-block   # exit 1", 1),
    ]


def test_enough_commands_are_marked_runnable():
    assert len(COMMANDS) >= 10, [str(c) for c in COMMANDS]
    assert any(c.page == "README.md" for c in COMMANDS)
    assert any(c.status != 0 for c in COMMANDS)  # the stated-status path is exercised


def test_no_runnable_command_listens_or_reaches_the_network():
    bad = [f"{c}: {c.text}" for c in COMMANDS if NOT_RUNNABLE.search(c.text)]
    assert bad == []


@pytest.fixture(scope="session")
def docs_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.getbasetemp()
    resolv = base / "docs-resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    hosts = base / "docs-hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOGATE_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        GEOGATE_CACHE_DIR=str(base / "geogate-cache"),  # the same private cache test_cli.py uses
        GEOGATE_RESOLV_CONF=str(resolv),
        GEOGATE_HOSTS_FILE=str(hosts),
    )
    return env


def run(command: Command, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command.text], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def command_results(request: pytest.FixtureRequest, docs_env: dict[str, str]) -> dict[Command, subprocess.CompletedProcess[str]]:
    """Every selected command, each distinct one once, run concurrently: most are interpreter
    start-up, and the first `geogate db info` in a fresh cache counts the networks of both
    databases (~20 s)."""
    selected = [item.callspec.params["command"] for item in request.session.items
                if item.originalname == "test_runnable_command_exits_as_stated" and hasattr(item, "callspec")]
    distinct = list({c.text: c for c in selected}.values())
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        by_text = dict(zip((c.text for c in distinct), pool.map(lambda c: run(c, docs_env), distinct), strict=True))
    return {c: by_text[c.text] for c in selected}


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_runnable_command_exits_as_stated(command: Command, command_results):
    proc = command_results[command]
    assert proc.returncode == command.status, (
        f"{command}: `{command.text}` exited {proc.returncode}, the page says {command.status}\n"
        f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}")
    assert "Traceback" not in proc.stderr


# -- links, paths, length ------------------------------------------------------------------------

def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_an_existing_file_without_an_anchor(page: Path):
    bad = []
    for target in relative_links(page):
        if "#" in target:
            bad.append(f"{target}: link to the page, not to an anchor")
        elif not (page.parent / target).exists():
            bad.append(f"{target}: no such file")
    assert bad == []


def test_the_link_checker_sees_broken_links_and_anchors(tmp_path: Path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("[a](there.md) [b](missing.md) [c](there.md#part) [d](https://example.com/#x)\n"
                    "```text\n[e](in-a-sample.md)\n```\n![f](there.md)\n")
    assert relative_links(page) == ["there.md", "missing.md", "there.md#part", "there.md"]


def test_every_page_in_docs_is_reachable_from_the_readme():
    seen, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.exists():
            continue
        seen.add(page)
        todo += [(page.parent / t).resolve() for t in relative_links(page) if "#" not in t]
    unreachable = [str(p.relative_to(ROOT)) for p in PAGES if p.resolve() not in seen]
    assert unreachable == []


@pytest.mark.parametrize("page", [*PAGES, ROOT / "bench" / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sample_shows_a_path_of_the_machine_it_ran_on(page: Path):
    bad = [f"{n}: {line.strip()}" for n, line in enumerate(page.read_text().splitlines(), 1) if MACHINE_PATH.search(line)]
    assert bad == []


def test_the_machine_path_check_tells_placeholders_from_real_paths():
    real = ["/root/.cache/geogate/x.mmdb", "policy (/work/main/policies/default.yaml)", "/tmp/pytest-of-root/x",
            "/home/alice/geogate"]
    fine = ["~/.cache/geogate/dbip-country.mmdb", "policies/default.yaml", "/etc/geogate/policy.yaml",
            "/var/lib/geogate/cache", "src/tmp/x"]
    assert [p for p in real if not MACHINE_PATH.search(p)] == []
    assert [p for p in fine if MACHINE_PATH.search(p)] == []


def test_the_readme_stays_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"
