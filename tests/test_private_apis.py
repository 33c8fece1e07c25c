"""The private APIs of mitmproxy and Python that geogate reads, each checked against the installed
version with real objects: a new mitmproxy or Python that changes one fails here, by name, rather
than in some end-to-end test or not at all (each adapter falls back quietly at run time)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket

import pytest
from mitmproxy import options as moptions
from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import layers
from mitmproxy.proxy import mode_servers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from geogate.core.ipaddress_private import int_and_version
from geogate.core.ipaddress_private import ip_key
from geogate.proxy.mitmproxy_private import client_writer
from geogate.proxy.mitmproxy_private import close_client_connection
from geogate.proxy.mitmproxy_private import layer_chooser

ADDRESSES = ["0.0.0.0", "1.2.3.4", "255.255.255.255", "::", "::1", "2001:db8::1", "::ffff:1.2.3.4",
             "64:ff9b::102:304", "fe80::1%eth0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]


@pytest.mark.parametrize("text", ADDRESSES)
def test_ipaddress_private_fields_are_what_geogate_reads(text):
    ip = ipaddress.ip_address(text)
    try:
        got = int_and_version(ip)
    except AttributeError as e:
        pytest.fail(f"ipaddress objects no longer have `_ip`/`_version` ({e}); "
                    f"geogate/core/ipaddress_private.py reads them: use int(ip) and ip.version there")
    assert got == (int(ip), ip.version), \
        f"ipaddress `_ip`/`_version` of {text} are {got}, not int() and .version: fix geogate/core/ipaddress_private.py"
    assert ip_key(ip) == int(ip) + (1 << 128 if ip.version == 6 else 0)


def test_mitmproxy_next_layer_choice_is_what_eager_passthrough_calls():
    with taddons.context(NextLayer()):
        choose = layer_chooser()
        assert choose is not None, ("mitmproxy's NextLayer addon has no `_next_layer` any more: "
                                    "geogate/proxy/mitmproxy_private.py layer_chooser (EagerPassthrough) relies on it")
        client = tflow.tclient_conn()
        client.proxy_mode = ProxyMode.parse("transparent")
        context = Context(client, moptions.Options())
        modes.TransparentProxy(context)
        try:
            chosen = choose(context, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", b"")
        except TypeError as e:
            pytest.fail(f"mitmproxy's NextLayer._next_layer(context, data_client, data_server) changed ({e}): "
                        f"geogate/proxy/mitmproxy_private.py layer_chooser (EagerPassthrough) calls it so")
        assert isinstance(chosen, layers.HttpLayer), \
            f"mitmproxy's NextLayer._next_layer returned {chosen!r} for plain HTTP: see EagerPassthrough"
    with taddons.context():
        assert layer_chooser() is None  # no NextLayer addon: geogate leaves the choice to mitmproxy


@contextlib.asynccontextmanager
async def served_connection():
    """A real server instance handling a real loopback connection (mitmproxy registers its handler
    in the proxyserver addon): (our client socket, the stream mitmproxy writes to the client, the
    task reading it, the handler). The client socket is closed and the task ended on the way out."""
    proxyserver = Proxyserver()
    with taddons.context(proxyserver) as tctx:
        tctx.configure(proxyserver, connection_strategy="lazy")
        instance = mode_servers.ServerInstance.make("regular@0", proxyserver)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            ours = socket.create_connection(listener.getsockname())
            theirs, _peer = listener.accept()
        reader, writer = await asyncio.open_connection(sock=theirs)
        task = asyncio.create_task(instance.handle_stream(reader, writer))
        try:
            for _ in range(200):
                if proxyserver.connections:
                    break
                await asyncio.sleep(0.005)
            assert len(proxyserver.connections) == 1, "mitmproxy's Proxyserver.connections no longer holds the handler"
            (handler,) = proxyserver.connections.values()
            yield ours, writer, task, handler
        finally:
            ours.close()
            if not task.done():
                await asyncio.wait_for(task, 5)


async def test_mitmproxy_client_writer_is_found_where_answer_before_upload_looks():
    # the adapter must find the very stream the client is written to
    async with served_connection() as (_ours, writer, _task, handler):
        found = client_writer(handler.client)
        assert found is writer, (
            "mitmproxy's Proxyserver.connections[client.id].transports[client].writer is not the client's stream "
            "any more: geogate/proxy/mitmproxy_private.py client_writer (the 403 before an upload) relies on it")
    with taddons.context():
        assert client_writer(handler.client) is None  # no proxyserver: nothing is written early


async def test_mitmproxy_listeners_share_their_port_where_workers_rely_on_it():
    # two real server instances on one port, as two workers of `geogate run --workers 2` bind it
    from geogate.proxy.mitmproxy_private import share_listening_ports

    undo = share_listening_ports()
    assert undo is not None, ("mitmproxy's mode_servers no longer binds with `asyncio.start_server` through its "
                              "module global `asyncio`: geogate/proxy/mitmproxy_private.py share_listening_ports "
                              "(geogate run --workers) relies on it")
    instances = []
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proxyserver = Proxyserver()
        with taddons.context(proxyserver) as tctx:
            tctx.configure(proxyserver, listen_host="127.0.0.1")
            for _ in range(2):
                instance = mode_servers.ServerInstance.make(f"regular@{port}", proxyserver)
                await instance.start()
                instances.append(instance)
            assert all(i.is_running for i in instances), [i.last_exception for i in instances]
            for instance in instances:
                (server,) = instance._servers
                (sock,) = server.sockets
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
                assert sock.getsockname()[1] == port
            for instance in instances:
                await instance.stop()
    finally:
        undo()
    from mitmproxy.proxy import mode_servers as ms

    assert ms.asyncio is asyncio  # undone: other tests bind as mitmproxy does

async def test_mitmproxy_client_connection_closes_where_revocation_cancels_it():
    # cancelling the task that reads the client must end the whole connection, as mitmproxy's
    # inactivity timeout does
    async with served_connection() as (ours, _writer, task, handler):
        assert close_client_connection(handler.client, "revoked"), (
            "mitmproxy's Proxyserver.connections[client.id].transports[client].handler (the task reading the "
            "client) is gone: geogate/proxy/mitmproxy_private.py close_client_connection (revocation) relies on it")
        await asyncio.wait_for(task, 10)
        ours.settimeout(10)
        assert ours.recv(1) == b"", "the client connection stayed open after its reader task was cancelled"
        assert not close_client_connection(handler.client, "again")  # gone: nothing to close
    with taddons.context():
        assert not close_client_connection(handler.client, "no proxyserver")
