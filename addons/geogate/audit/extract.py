"""A recorded flow -> RecordedFlow: destination, recorded address, client, bytes each way. Pure.

Two inputs, one result:
- `from_state`: a mitmproxy flow state in the current format (what flowfile.states yields, and
  what `flow.get_state()` returns for a flow mitmdump replays; the replay addon uses that, so
  the CLI and the addon read flows identically);
- `from_har_entry`: one HAR 1.2 entry, in the dialects browsers and tools really write.

Which address counts as "recorded", in order: the peer address mitmproxy connected to
(server_conn.peername; not when the flow went through an upstream proxy, whose address that
is); else the server address when it is an IP literal (transparent mode, HAR-converted flows);
else the URL host when it is an IP literal; else the address a live geogate checked, from the
decision it saved in flow.metadata["geogate"] (flows it refused never connected). Nothing is
ever guessed from a name.

Byte counts are what crossed the wire as far as the recording tells: HTTP head (request/status
line and headers, as HTTP/1.1 would frame them) plus body as transferred, WebSocket and
TCP/UDP message payloads, DNS messages.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any
from urllib.parse import SplitResult
from urllib.parse import urlsplit

from geogate.audit.harstream import OMITTED
from geogate.audit.harstream import PREFIX_KEY
from geogate.audit.model import NotSent
from geogate.audit.model import RecordedFlow
from geogate.core.addresses import AddressError
from geogate.core.addresses import IPAddress
from geogate.core.addresses import canonical_host
from geogate.core.addresses import parse_ip
from geogate.core.clients import INTERCEPTED_MODES
from geogate.core.clients import client_text as _client_text
from geogate.core.clients import user_of as _user
from geogate.core.urls import log_url

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}  # also: the schemes that are traffic
_MODE_NAME = re.compile(r"[a-z0-9_]+")


class ExtractError(ValueError):
    """The flow has nothing an audit can use; the message says what is missing."""


# What from_state raises, besides ExtractError, for a state that migrated but is not shaped like a
# flow (a field of the wrong type, a missing key): the readers and the replay audit skip that one
# flow and go on.
MALFORMED_STATE = (KeyError, TypeError, IndexError, AttributeError, ValueError)


class NotTraffic(ExtractError):
    """A HAR entry that is no network traffic and names no destination: a data:, blob: or
    extension URL. Counted apart, never audited, never an error (entries that name one but were
    not sent are NotSent)."""


_CACHE_FETCH_TYPES = {"Memory Cache", "Disk Cache"}  # Safari
_CACHE_MARKERS = {"memory", "disk"}  # Chrome's _fromCache


# -- small helpers ----------------------------------------------------------------------------

def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else str(value)


def _canonical(host: str) -> str | None:
    """canonical_host (which remembers its answers), or None for a host it refuses."""
    try:
        return canonical_host(host)
    except AddressError:
        return None




def _mode(proxy_mode: Any) -> str:
    """`regular`, `transparent`, ... from a mode spec such as `reverse:https://x@8080`."""
    m = _MODE_NAME.match(_text(proxy_mode) or "regular")
    return m.group() if m else "regular"


def _url(scheme: str, host: str, port: int | None, path: str) -> str:
    """scheme://host[:port]/path, without query or fragment: reports are shared, and tokens
    travel in query strings."""
    shown = f"[{host}]" if ":" in host else host
    if port and port != _DEFAULT_PORTS.get(scheme):
        shown += f":{port}"
    path = path.split("?", 1)[0].split("#", 1)[0]  # what log_url(..., "path") keeps of a path
    if path and not path.startswith("/"):  # CONNECT authority-form, asterisk-form
        path = ""
    return log_url(f"{scheme}://{shown}{path or '/'}", "path") or ""


def _name_claim(*candidates: Any) -> str | None:
    """The first candidate (SNI, :authority, Host: with or without a port) that is a host name."""
    for c in candidates:
        text = _text(c).strip()
        if text.startswith("["):  # [v6]:port: an address, never a name
            continue
        if text.count(":") == 1:
            text = text.split(":", 1)[0]
        if text and parse_ip(text) is None:
            name = _canonical(text)
            if name:
                return name
    return None


def _header(headers: Any, name: bytes) -> bytes | None:
    for k, v in headers or ():
        if k.lower() == name:
            return v
    return None


def _head_size(first_line: int, headers: Any) -> int:
    return first_line + 2 + sum(len(k) + len(v) + 4 for k, v in headers or ()) + 2


def _trailers_size(message: dict) -> int:
    trailers = message.get("trailers")
    return sum(len(k) + len(v) + 4 for k, v in trailers) + 2 if trailers else 0


def _body_size(message: dict) -> int:
    content = message.get("content")
    if content is not None:
        return len(content)
    # body not kept (stream_large_bodies): the announced length is the best record there is
    length = _header(message.get("headers"), b"content-length")
    try:
        return int(length) if length else 0
    except ValueError:
        return 0


# -- mitmproxy flow states --------------------------------------------------------------------

def from_state(state: dict, source: str, index: int) -> RecordedFlow:
    kind = state.get("type")
    client = state.get("client_conn") or {}
    server = state.get("server_conn") or {}
    mode = _mode(client.get("proxy_mode"))
    request = state.get("request") if kind == "http" else None
    address_pair = server.get("address")

    if kind == "http":
        if not request:
            raise ExtractError("HTTP flow without a request")
        dial_host = _text(request.get("host"))
        port = request.get("port")
        scheme = _text(request.get("scheme")).lower() or "http"
        path = _text(request.get("path"))
    elif kind in ("tcp", "udp", "dns"):
        pair = address_pair or server.get("peername")
        if not pair:
            raise ExtractError(f"{kind.upper()} flow without a server address")
        dial_host, port = _text(pair[0]), pair[1]
        scheme, path = kind, ""
    else:
        raise ExtractError(f"unsupported flow type {kind!r}")

    live = _live_decision(state)
    host, host_is_claim = _host(dial_host, request, client, server, mode, live)
    address, address_source = _recorded_address(server, address_pair, dial_host)
    if address is None and live and live.get("host") == host and isinstance(live.get("address"), str):
        address = parse_ip(live["address"])
        address_source = "geogate-decision" if address is not None else None
    sent, received = _state_bytes(kind, state)
    if live and live.get("action") == "block" and not server.get("peername"):
        received = 0  # the response is geogate's own refusal; nothing came from the destination
    if kind == "http" and state.get("websocket"):
        kind, scheme = "websocket", "wss" if scheme == "https" else "ws"
    proxyauth = (state.get("metadata") or {}).get("proxyauth")
    error = state.get("error")
    return RecordedFlow(
        source=source,
        index=index,
        flow_id=_text(state.get("id")) or None,
        kind=kind,
        scheme=scheme,
        url=_url(scheme, host or dial_host, port, path),
        host=host,
        host_text=dial_host,
        port=port if isinstance(port, int) and 0 < port < 65536 else None,
        sni=_text(server.get("sni") or client.get("sni")) or None,
        client=_client_text(client.get("peername")),
        client_ip=parse_ip(_text(client["peername"][0])) if client.get("peername") else None,
        user=_user(proxyauth),
        mode=mode,
        address=address,
        address_source=address_source,
        host_is_claim=host_is_claim,
        bytes_sent=sent,
        bytes_received=received,
        started=state.get("timestamp_created") or (request or {}).get("timestamp_start"),
        error=_text(error.get("msg")) if isinstance(error, dict) else None,
    )


def _host(dial_host: str, request: dict | None, client: dict, server: dict, mode: str,
          live: dict | None) -> tuple[str | None, bool]:
    """The host name the decision is about, and whether it is only a claim about the address."""
    intercepted = mode in INTERCEPTED_MODES
    ip = parse_ip(dial_host)
    if ip is None:
        host = _canonical(dial_host)
        return host, intercepted and host is not None
    # Dialled by address (transparent mode, or a proxy that pinned the checked address): a name
    # from SNI or Host says what the client meant, not where it went...
    authority = request.get("authority") if request else None
    host_header = _header(request.get("headers"), b"host") if request else None
    name = _name_claim(server.get("sni"), client.get("sni"), authority, host_header)
    if name is None:
        return _canonical(dial_host), False
    # ...unless geogate itself resolved that name to this address and pinned it (regular mode)
    pinned_by_geogate = (live is not None and not intercepted and live.get("host") == name
                         and live.get("address") == str(ip) and not live.get("host_mismatch"))
    return name, not pinned_by_geogate


def _live_decision(state: dict) -> dict | None:
    """The decision record a live geogate saved with the flow (docs/decision-record.md), if any."""
    rec = (state.get("metadata") or {}).get("geogate")
    return rec if isinstance(rec, dict) and rec.get("host") else None


def _recorded_address(server: dict, address_pair: Any, dial_host: str):
    peer = server.get("peername")
    if peer and not server.get("via"):
        ip = parse_ip(_text(peer[0]))
        if ip is not None:
            return ip, "peername"
    if address_pair:
        ip = parse_ip(_text(address_pair[0]))
        if ip is not None:
            return ip, "server-address"
    ip = parse_ip(dial_host)
    if ip is not None:
        return ip, "url-host"
    return None, None


def _state_bytes(kind: str, state: dict) -> tuple[int, int]:
    if kind == "http":
        req = state["request"]
        sent = _head_size(len(req.get("method") or b"") + len(req.get("path") or b"")
                          + len(req.get("http_version") or b"") + 2, req.get("headers"))
        sent += _body_size(req) + _trailers_size(req)
        received = 0
        resp = state.get("response")
        if resp:
            received = _head_size(len(resp.get("http_version") or b"") + 5 + len(resp.get("reason") or b""),
                                  resp.get("headers"))
            received += _body_size(resp) + _trailers_size(resp)
        ws = state.get("websocket")
        if ws:
            # (type, from_client, content, timestamp, dropped, injected)
            ws_sent, ws_received = _message_sizes(ws.get("messages"), 1)
            sent, received = sent + ws_sent, received + ws_received
        return sent, received
    if kind in ("tcp", "udp"):
        return _message_sizes(state.get("messages"), 0)  # (from_client, content, timestamp)
    return _dns_size(state.get("request")), _dns_size(state.get("response"))


def _message_sizes(messages, from_client_at: int) -> tuple[int, int]:
    """(sent, received) bytes of recorded messages; the content follows the from_client flag."""
    sent = received = 0
    for msg in messages or ():
        if msg[from_client_at]:
            sent += len(msg[from_client_at + 1])
        else:
            received += len(msg[from_client_at + 1])
    return sent, received


def _dns_size(message: dict | None) -> int:
    if not message:
        return 0
    from mitmproxy import dns  # only DNS-mode captures get here

    try:
        return len(dns.DNSMessage.from_state(message).packed)
    except Exception:  # a message mitmproxy cannot re-pack still happened; its size is unknown
        return 0


# -- HAR 1.2 ----------------------------------------------------------------------------------

def _int(value: Any) -> int | None:
    """A size field: HAR writes -1 (or omits it) for unknown."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _string(value: Any) -> str | None:
    """A HAR string field, or the start of one too long to keep (see harstream)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get(PREFIX_KEY), str):
        return value[PREFIX_KEY]
    return None


def _text_size(value: Any, encoding: Any = None) -> int:
    """Bytes of a HAR text field; omitted long strings carry their size."""
    if isinstance(value, dict):
        size = _int(value.get(OMITTED)) or 0
        return size * 3 // 4 if encoding == "base64" else size
    if not isinstance(value, str):
        return 0
    if encoding == "base64":
        try:
            return len(base64.b64decode(value, validate=False))
        except (binascii.Error, ValueError):
            return len(value) * 3 // 4
    return len(value.encode("utf-8", "surrogatepass"))


def _har_headers(headers: Any) -> list[tuple[str, str]]:
    out = []
    for h in headers if isinstance(headers, list) else ():
        if isinstance(h, dict):
            out.append((_text(h.get("name")), _text(h.get("value"))))
        elif isinstance(h, (list, tuple)) and len(h) >= 2:  # Slack writes [name, value]
            out.append((_text(h[0]), _text(h[1])))
    return out


def _har_head(message: dict, first_line: int) -> int:
    size = _int(message.get("headersSize"))
    if size is not None:
        return size
    headers = _har_headers(message.get("headers"))
    return _head_size(first_line, [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                                   for k, v in headers])


def from_har_entry(entry: Any, source: str, index: int, name: str) -> RecordedFlow | NotSent:
    """`name`: the file's base name, to give entries (which have no id) a stable one."""
    if not isinstance(entry, dict):
        raise ExtractError("entry is not an object")
    offline = _not_sent(entry)
    try:
        request, scheme, parts, port = _har_target(entry)
    except ExtractError as e:
        if offline is not None:  # never on the network, so not worth a problem either
            raise NotTraffic(str(e)) from None
        raise
    host_text = parts.hostname or ""
    host = _canonical(host_text)
    if offline is not None:
        return NotSent(source, index, _url(scheme, host or host_text, port, parts.path), host, host_text, port,
                       offline[0], offline[1], _har_time(entry.get("startedDateTime")))
    address, address_source = _har_address(entry, host_text)
    sent = _har_request_size(request, parts)
    response = entry.get("response")
    received = _har_response_size(response) if isinstance(response, dict) else 0
    kind = "http"
    if _is_websocket(entry, scheme):
        kind = "websocket"
        ws_sent, ws_received = _har_ws_sizes(entry.get("_webSocketMessages"))
        sent, received = sent + ws_sent, received + ws_received
        if scheme in ("http", "https"):
            scheme = "wss" if scheme == "https" else "ws"
    error = entry.get("_error") or (response.get("_error") if isinstance(response, dict) else None)
    return RecordedFlow(
        source=source,
        index=index,
        flow_id=f"{name}#{index + 1}",
        kind=kind,
        scheme=scheme,
        url=_url(scheme, host or host_text, port, parts.path),
        host=host,
        host_text=host_text,
        port=port,
        sni=None,
        client=None,
        client_ip=None,
        user=None,
        mode="har",
        address=address,
        address_source=address_source,
        host_is_claim=False,
        bytes_sent=sent,
        bytes_received=received,
        started=_har_time(entry.get("startedDateTime")),
        error=_text(error) or None,
    )


def _shown(url: str) -> str:
    """A URL quoted in a problem line: reports are shared, so shaped like every URL they show."""
    return (log_url(url, "path") or "")[:80]


def _har_target(entry: dict) -> tuple[dict, str, SplitResult, int | None]:
    """(request, scheme, URL parts, port) of an entry whose URL is network traffic."""
    request = entry.get("request")
    url = _string(request.get("url")) if isinstance(request, dict) else None
    if url is None or not isinstance(request, dict):
        raise ExtractError("entry has no request.url")
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in _DEFAULT_PORTS:
        raise NotTraffic(f"{scheme or 'scheme-less'} URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ExtractError(f"request.url {_shown(url)!r} is not a usable URL ({e})") from None
    if not parts.hostname:
        raise ExtractError(f"request.url {_shown(url)!r} has no host")
    return request, scheme, parts, port or _DEFAULT_PORTS.get(scheme)


def _not_sent(entry: dict) -> tuple[str, str | None] | None:
    """(why, detail) when the entry says it never went to the network, else None.

    Browsers mark it differently: Chrome `_fromCache` and `response._fetchedViaServiceWorker`,
    Safari `_fetchType`; Firefox marks nothing, but a response it took from its cache has no
    serverIPAddress, no timings at all (`timings: {}`) and no HTTP version. A failed request
    (status 0, Chrome's `_error` such as net::ERR_INTERNET_DISCONNECTED) was not sent unless its
    timings show it was: sending, waiting or receiving time, or bytes transferred."""
    # _string: a list or object there is not a marker (and `in` a set would raise TypeError)
    if _string(entry.get("_fetchType")) in _CACHE_FETCH_TYPES or _string(entry.get("_fromCache")) in _CACHE_MARKERS:
        return "cache", None
    response = entry.get("response")
    if _server_ip(entry) is not None or not isinstance(response, dict):
        return None  # the browser recorded where it connected; or no response to tell (as recorded: traffic)
    if response.get("_fetchedViaServiceWorker") is True:
        return "service-worker", None
    timings = entry.get("timings")
    status = response.get("status")
    if status == 0 and not isinstance(status, bool):
        if _went_out(timings) or _int(response.get("_transferSize")):
            return None
        error = _string(entry.get("_error")) or _string(response.get("_error"))
        return "failed", error or None
    if timings == {} and not _text(response.get("httpVersion")):
        return "cache", None  # Firefox
    return None


def _went_out(timings: Any) -> bool:
    """Whether HAR timings show a request on the wire: a connection set up, time spent sending,
    waiting for or receiving a response (-1 and 0 mean none)."""
    if not isinstance(timings, dict):
        return False
    return any(isinstance(timings.get(k), (int, float)) and not isinstance(timings.get(k), bool) and timings[k] > 0
               for k in ("connect", "send", "wait", "receive"))


def _server_ip(entry: dict) -> IPAddress | None:
    # Chrome writes IPv6 as "[2001:db8::1]", Firefox without brackets, some tools "" or omit it.
    server_ip = entry.get("serverIPAddress")
    return parse_ip(server_ip) if isinstance(server_ip, str) and server_ip.strip() else None


def _har_address(entry: dict, host_text: str) -> tuple[IPAddress | None, str | None]:
    address = _server_ip(entry)
    if address is not None:
        return address, "serverIPAddress"
    address = parse_ip(host_text)
    return (address, "url-host") if address is not None else (None, None)


def _har_request_size(request: dict, parts: SplitResult) -> int:
    method = _text(request.get("method")) or "GET"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    version = _text(request.get("httpVersion")) or "HTTP/1.1"
    body = _int(request.get("bodySize"))
    if body is None:
        post = request.get("postData")
        if not isinstance(post, dict):
            post = {}
        body = _text_size(post.get("text"))
    return _har_head(request, len(method) + len(target) + len(version) + 2) + body


def _har_response_size(response: dict) -> int:
    if not _int(response.get("status")):
        return 0  # no response arrived
    transfer = _int(response.get("_transferSize"))  # Chrome: everything received, headers included
    if transfer is not None:
        return transfer
    reason = _text(response.get("statusText"))
    head = _har_head(response, len(_text(response.get("httpVersion")) or "HTTP/1.1") + 5 + len(reason))
    body = _int(response.get("bodySize"))
    if body is None:
        content = response.get("content")
        if not isinstance(content, dict):
            content = {}
        body = _int(content.get("size"))
        if body is None:
            body = _text_size(content.get("text"), content.get("encoding"))
    return head + body


def _is_websocket(entry: dict, scheme: str) -> bool:
    return (scheme in ("ws", "wss") or entry.get("_resourceType") == "websocket"
            or isinstance(entry.get("_webSocketMessages"), list))


def _har_ws_sizes(messages: Any) -> tuple[int, int]:
    """(sent, received) payload bytes of Chrome's _webSocketMessages."""
    sent = received = 0
    for msg in messages if isinstance(messages, list) else ():
        if not isinstance(msg, dict):
            continue
        size = _text_size(msg.get("data"), "base64" if msg.get("opcode") == 2 else None)
        if msg.get("type") == "send":
            sent += size
        elif msg.get("type") == "receive":
            received += size
    return sent, received


def _har_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
