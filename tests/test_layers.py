"""The package's layers: dependencies point one way, core <- policy, metrics <- shells (proxy, audit,
gateway) <- addon, cli. metrics (Prometheus) sits beside policy: both shells count with it, and it
needs only core.

Checked on the source (every import statement, including those inside functions), so a lazy
import cannot hide a dependency that runs the wrong way.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "addons" / "geogate"

# A module may import its own layer and those with a smaller number. Shells do not import each
# other; the two entry points (the command and the mitmproxy script) put them together.
LAYER = {
    "core": 0,
    "policy": 1,
    "metrics": 1,  # beside policy, not above it: imports core only, and policy does not import it
    "proxy": 2,
    "audit": 2,
    "gateway": 2,
    "addon": 3,  # the mitmproxy script: the proxy, given the audit of replayed flows
    "cli": 4,  # the command: everything, geogate addon-path included
}


def layer_of(module: str) -> str | None:
    """'geogate.core.decide' -> 'core'; 'geogate' (the version) has no layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "geogate" else None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_name(path).split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from geogate import core`: the names may be modules of another layer
            if target == "geogate":
                found += [(node.lineno, f"geogate.{a.name}") for a in node.names if not a.name.startswith("__")]
    return [(line, m) for line, m in found if m == "geogate" or m.startswith("geogate.")]


def violations(path: Path) -> list[str]:
    own = layer_of(module_name(path))
    if own is None:
        return []
    bad = []
    for line, target in imported_modules(path):
        other = layer_of(target)
        if other is None or other == own:
            continue
        if other not in LAYER:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target}, which is in no known layer")
        elif LAYER[other] >= LAYER[own]:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {target} ({other})")
    return bad


def test_every_module_is_in_a_known_layer():
    unknown = sorted({layer_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - set(LAYER) - {None})
    assert unknown == []


def test_dependencies_point_one_way():
    bad = [v for p in sorted(PACKAGE.rglob("*.py")) for v in violations(p)]
    assert bad == []


@pytest.mark.parametrize("source, expected", [
    ("from geogate.proxy.addon import GeoGate\n", ["core imports geogate.proxy.addon (proxy)"]),
    ("import geogate.policy.loader\n", ["core imports geogate.policy.loader (policy)"]),
    ("def f():\n    from geogate.cli import main\n", ["core imports geogate.cli (cli)"]),
    ("from geogate import audit\n", ["core imports geogate.audit (audit)"]),
    ("from ..policy import state\n", ["core imports geogate.policy (policy)"]),
    ("from geogate.core.addresses import parse_ip\nfrom . import geo\n", []),
])
def test_the_checker_sees_each_kind_of_import(tmp_path, monkeypatch, source, expected):
    fake = tmp_path / "geogate"
    (fake / "core").mkdir(parents=True)
    module = fake / "core" / "example.py"
    module.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = violations(module)
    assert [v.split(": ", 1)[1] for v in found] == expected


def test_the_decision_engine_loads_no_database_library_and_reads_no_data():
    code = textwrap.dedent("""
        import sys
        opened = []
        def hook(event, args):
            if event == "open" and isinstance(args[0], str) and not args[0].endswith((".py", ".pyc")):
                opened.append(args[0])
        sys.addaudithook(hook)
        import geogate.core.decide, geogate.core.record
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("maxminddb", "yaml", "mitmproxy", "dns"))
        data = [p for p in opened if "geogate" in p]
        print(heavy, data)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


def test_importing_metrics_starts_nothing_and_opens_nothing_of_its_own():
    code = textwrap.dedent("""
        import sys, threading
        opened = []
        def hook(event, args):
            if event in ("open", "socket.bind") and not str(args[0]).endswith((".py", ".pyc")):
                opened.append((event, str(args[0])))
        sys.addaudithook(hook)
        import prometheus_client  # reads /proc for its own default registry
        library = list(opened)
        import geogate.metrics.families, geogate.metrics.serve, geogate.metrics.kernel
        print(opened == library, threading.active_count(), "geogate_decisions" in prometheus_client.REGISTRY._names_to_collectors)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True 1 False"


def test_with_metrics_off_prometheus_client_is_never_loaded():
    code = ("import sys, geogate.proxy.addon, geogate.gateway.daemon, geogate.cli.run_proxy, geogate.cli.gateway; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
