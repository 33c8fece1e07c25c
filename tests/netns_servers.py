"""Echo servers for the namespace tests, and the client's tries at them (gateway_netns.Topology,
gateway_pair.Pair): a try says how the network answered ("open", "reset", "echo", an errno name,
"timeout"), so a test asserts the verdict it expects."""

from __future__ import annotations

import errno
import socket
import threading
import time


def family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


class TcpEcho:
    """Accepts on (ip, port), keeps each peer (a masqueraded peer names the gateway), echoes what
    it reads on each connection for as long as the connection lasts."""

    def __init__(self, ip: str, port: int) -> None:
        self.peers: list[tuple] = []
        self.sock = socket.socket(family(ip), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def accepted(self) -> int:
        return len(self.peers)

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


class UdpEcho:
    """Receives on (ip, port), keeps each datagram with when it arrived and each peer, echoes it."""

    def __init__(self, ip: str, port: int) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.peers: list[tuple] = []
        self.sock = socket.socket(family(ip), socket.SOCK_DGRAM)
        self.sock.bind((ip, port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(2048)
            except OSError:
                return
            self.received.append((time.monotonic(), data))
            self.peers.append(peer)
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self.sock.close()


def tcp_ping(s: socket.socket, ip: str, port: int) -> str:
    """Connects the socket `s` to (ip, port), sends "ping", closes it: "open" when it came back."""
    s.settimeout(3)
    try:
        s.connect((ip, port))
        s.sendall(b"ping")
        return "open" if s.recv(4) == b"ping" else "silent"
    except ConnectionRefusedError:
        return "reset"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout"
    finally:
        s.close()


def udp_ping(s: socket.socket, ip: str, port: int) -> str:
    """Sends a datagram from the socket `s` to (ip, port), closes it: "echo" when it came back."""
    s.settimeout(1.5)
    try:
        s.connect((ip, port))
        s.send(b"datagram")
        return "echo" if s.recv(64) == b"datagram" else "other"
    except OSError as e:
        # a refusal comes back as an ICMP error, reported on the connected socket
        return errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
    finally:
        s.close()


def tcp_try(topo, ip: str, port: int) -> str:
    """From the client namespace; a reset that took a second or more is a "slow reset"."""
    with topo.inside("client"):
        s = socket.socket(family(ip), socket.SOCK_STREAM)
    started = time.monotonic()
    result = tcp_ping(s, ip, port)
    return "slow reset" if result == "reset" and time.monotonic() - started >= 1 else result


def udp_try(topo, ip: str, port: int) -> str:
    with topo.inside("client"):
        s = socket.socket(family(ip), socket.SOCK_DGRAM)
    return udp_ping(s, ip, port)
