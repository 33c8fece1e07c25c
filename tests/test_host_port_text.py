"""Every place geogate prints a destination as host:port writes an IPv6 literal in brackets
(`[2a02:d0c0::1]:80`, never `2a02:d0c0::1:80`, which reads as port 1:80 or as a longer address),
and a missing port as no port at all."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from geogate.audit.model import RecordedFlow
from geogate.cli.main import _explain_text
from geogate.cli.run_proxy import listen_lines
from geogate.core.clients import client_text
from geogate.core.decide import Request
from geogate.core.record import block_body
from geogate.core.record import decision_record
from geogate.core.record import summary_line
from geogate.policy.state import GateState

ROOT = Path(__file__).resolve().parents[1]
TEST_DB = ROOT / "tests" / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb"


@pytest.fixture(scope="module")
def state():
    return GateState.load(ROOT / "policies" / "default.yaml", [TEST_DB])


def _decision(state, host: str, port: int | None):
    literal = host if ":" in host or host[0].isdigit() else "192.0.2.1"
    return state.decide(Request(host=host, port=port, flow_id="f1", mode="regular"), [ipaddress.ip_address(literal)])


def _flow(host: str, port: int | None) -> RecordedFlow:
    return RecordedFlow(source="f", index=0, flow_id=None, kind="http", scheme="http", url="http://x/", host=host,
                        host_text=host, port=port, sni=None, client=None, client_ip=None, user=None, mode="regular",
                        address=None, address_source=None, host_is_claim=False, bytes_sent=0, bytes_received=0,
                        started=None)


PLACES = {
    "block page": lambda state, host, port: block_body(_decision(state, host, port)),
    "summary line": lambda state, host, port: summary_line(decision_record(_decision(state, host, port))),
    "explain": lambda state, host, port: _explain_text(_decision(state, host, port), "test"),
    "audit destination": lambda state, host, port: _flow(host, port).destination,
    "run listening line": lambda state, host, port: listen_lines("regular", host, port),
    "client": lambda state, host, port: client_text((host, port)),
}
WITH_PORT = [("2a02:d0c0::1", 80, "[2a02:d0c0::1]:80"), ("192.0.2.1", 443, "192.0.2.1:443"),
             ("example.com", 8080, "example.com:8080")]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("host, port, text", WITH_PORT)
def test_host_and_port_are_written_as_a_url_writes_them(state, place, host, port, text):
    shown = PLACES[place](state, host, port)
    assert text in shown, shown
    if ":" in host:
        assert f"{host}:{port}" not in shown.replace(text, ""), shown


@pytest.mark.parametrize("place", ["block page", "summary line", "explain", "audit destination"])
@pytest.mark.parametrize("host", ["2a02:d0c0::1", "example.com"])
def test_no_port_is_shown_as_none(state, place, host):
    shown = PLACES[place](state, host, None)
    assert host in shown and "None" not in shown, shown
    assert not re.search(re.escape(host) + r"\]?:\d", shown), shown
