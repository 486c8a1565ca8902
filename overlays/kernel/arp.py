"""Gratuitous ARP: telling a segment where an address is, from the host side of it.

Why the overlay needs it. A sandbox that asks for a remote address before its host's
agent has programmed the VXLAN device's neighbour entry gets no answer (the device
answers ARP from that table and floods none), and Linux asks again only after
``retrans_time`` (1 s). The agent, once it has programmed the entry, sends one
broadcast ARP *reply* announcing the address into the network's bridge: every
sandbox that is still waiting (an incomplete neighbour entry) takes it at once and
sends what it queued. A sandbox that was not asking ignores it (``arp_accept`` is 0,
so an unsolicited announcement creates no entry), and the VXLAN device, which
handles every ARP frame itself when it proxies, drops it: it never leaves the host.

The Ethernet source is the bridge's own address, not the announced MAC, so no
bridge or switch on the way learns the remote MAC behind the wrong port; ARP reads
the sender from the ARP header.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

ETH_P_ARP = 0x0806
ARPHRD_ETHER = 1
ETH_P_IP = 0x0800
ARPOP_REPLY = 2
BROADCAST = b"\xff" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def announcement(ip: str, mac: str, source_mac: str) -> bytes:
    """A broadcast gratuitous ARP reply: ``ip`` is at ``mac`` (sender and target alike), sent by ``source_mac``."""
    hw, addr = _mac(mac), ipaddress.IPv4Address(ip).packed
    header = BROADCAST + _mac(source_mac) + struct.pack("!H", ETH_P_ARP)
    return header + _ARP.pack(ARPHRD_ETHER, ETH_P_IP, 6, 4, ARPOP_REPLY, hw, addr, hw, addr)


def packet_socket() -> socket.socket:
    """A raw packet socket for ARP frames, in the calling thread's namespace (it keeps that one for life)."""
    import socket  # ~5 ms: only the agent announces

    return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))


def send(sock: socket.socket, ifname: str, frame: bytes) -> None:
    """Transmit ``frame`` on the link ``ifname`` (named in the socket's namespace)."""
    sock.sendto(frame, (ifname, ETH_P_ARP))
