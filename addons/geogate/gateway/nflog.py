"""NFLOG: the packets the kernel refused (`log group N` in chain `blocked`), read over netlink.

Only the first bytes of each packet are copied: enough for the IP and transport headers.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
COPY_RANGE = 96
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 33: "dccp", 136: "udplite"}
PORTED = {6, 17, 33, 132, 136}


@dataclass(frozen=True, slots=True)
class Refused:
    """One refused packet: who sent what where."""

    protocol: str
    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int | None


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class NflogSocket:
    """Bound to one NFLOG group; `read()` gives the refused packets in what arrived."""

    def __init__(self, group: int) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        self._config(_message(kind, group, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), 1))
        mode = struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)
        self._config(_message(kind, group, _attr(NFULA_CFG_MODE, mode), 2))

    def _config(self, msg: bytes) -> None:
        self.sock.send(msg)
        data = self.sock.recv(65536)
        (kind,) = struct.unpack_from("=H", data, 4)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, 16)
            if error:
                self.sock.close()
                raise OSError(-error, f"NFLOG configuration refused: {errno.errorcode.get(-error, error)}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Refused]:
        data = self.sock.recv(1 << 17)
        out = []
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                payload = _payload(data[offset + 20: offset + length])
                if payload is not None:
                    refused = parse_packet(payload)
                    if refused is not None:
                        out.append(refused)
            offset += (length + 3) & ~3
        return out

    def close(self) -> None:
        self.sock.close()


def _payload(attrs: bytes) -> bytes | None:
    offset = 0
    while offset + 4 <= len(attrs):
        length, kind = struct.unpack_from("=HH", attrs, offset)
        if length < 4:
            return None
        if kind & 0x3FFF == NFULA_PAYLOAD:
            return attrs[offset + 4: offset + length]
        offset += (length + 3) & ~3
    return None


def parse_packet(packet: bytes) -> Refused | None:
    """The IP header (and the destination port) of a copied packet; None for anything else."""
    if not packet:
        return None
    version = packet[0] >> 4
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0xF) * 4
        proto = packet[9]
        src, dst = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
        transport = ihl
    elif version == 6 and len(packet) >= 40:
        proto = packet[6]
        src, dst = ipaddress.IPv6Address(packet[8:24]), ipaddress.IPv6Address(packet[24:40])
        transport = 40
        # hop-by-hop, routing, destination options: skip to the transport header
        while proto in (0, 43, 60) and len(packet) >= transport + 8:
            proto, transport = packet[transport], transport + (packet[transport + 1] + 1) * 8
    else:
        return None
    port = None
    if proto in PORTED and len(packet) >= transport + 4:
        (port,) = struct.unpack_from(">H", packet, transport + 2)
    return Refused(PROTOCOLS.get(proto, str(proto)), src, dst, port)
