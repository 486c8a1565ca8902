"""Traffic control: the few qdiscs and the one filter faults use, packed by hand like nl.py's messages.

Design note. A rate (or, where the kernel has netem, a delay) is a qdisc on an
interface's egress: ``tbf`` for a rate alone (its queue holds 200 ms at the rate,
its burst a GSO packet at least, so TCP's goodput lands within a few percent of the
rate), ``netem`` for a delay with an optional rate of its own. Ingress cannot be
shaped in place, so ingress traffic is redirected (a ``u32`` match-all filter with a
``mirred`` action on the ``ingress`` qdisc) to an ``ifb`` device, whose egress
carries the qdisc, as the CNI bandwidth plugin does; ifb hands every packet back
to the interface's receive path afterwards.

What is ours: root qdiscs with handle ``6f76:`` ("ov") and filters of priority
0x6f76; on the host-side veth of a dual-stack endpoint, a ``clsact`` qdisc and the MLD
report filter (``cls_bpf``, priority 0x6f77: see bpf.py). Nothing else is replaced or
deleted. Changes are read back first, so ensuring what is there already changes nothing.

Netlink layouts (linux/pkt_sched.h, pkt_cls.h, tc_act/tc_mirred.h): ``struct tcmsg``;
TBF's ``tc_tbf_qopt`` (two ``tc_ratespec`` and limit, buffer, mtu) with the burst given
in bytes (TCA_TBF_BURST) so the kernel computes the buffer; netem's options are its
``tc_netem_qopt`` followed by attributes (64-bit latency and jitter in ns, the rate).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from overlays.errors import KernelError
from overlays.kernel import netns, nl
from overlays.kernel.nl import Header, NetlinkError, attr, attr_str, attr_u32

RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
TCMSG = Header("=BxxxiIII", ("family", "index", "handle", "parent", "info"))
TCA_KIND, TCA_OPTIONS = 1, 2
TC_H_ROOT, TC_H_INGRESS = 0xFFFFFFFF, 0xFFFFFFF1
TC_H_MIN_INGRESS = 0xFFF2  # clsact's ingress hook
INGRESS_HANDLE = 0xFFFF0000
OURS = 0x6F760000  # handle 6f76: ("ov")
OUR_PRIO = 0x6F76
MLD_PRIO, MLD_HANDLE = 0x6F77, 1
ETH_P_IPV6 = 0x86DD
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
ETH_P_ALL = 0x0003
TC_LINKLAYER_ETHERNET = 1
TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST = 1, 4, 6
TCA_NETEM_RATE, TCA_NETEM_RATE64, TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64 = 6, 8, 10, 11
TCA_U32_SEL, TCA_U32_ACT = 5, 7
TC_U32_TERMINAL = 1
TCA_ACT_KIND, TCA_ACT_OPTIONS = 1, 2
TCA_MIRRED_PARMS = 2
TC_ACT_STOLEN, TCA_EGRESS_REDIR = 4, 1
PSCHED_SHIFT = 6  # a psched tick is 64 ns
QUEUE_SECONDS = 0.2
BURST_MIN = 64 * 1024  # a GSO packet: tbf splits larger ones, and a smaller burst starves TCP
HZ = 250

_RATESPEC = struct.Struct("=BBHhHI")  # cell_log, linklayer, overhead, cell_align, mpu, rate (bytes/s, 32 bits)
_TBF_TAIL = struct.Struct("=III")  # limit (bytes), buffer (ticks), mtu (ticks)
_NETEM_QOPT = struct.Struct("=IIIIII")  # latency, limit, loss, gap, duplicate, jitter
_NETEM_RATE = struct.Struct("=IiIi")  # rate, packet_overhead, cell_size, cell_overhead
_U32_SEL = struct.Struct("=BBBxHHhhI")  # flags, offshift, nkeys, offmask, off, offoff, hoff, hmask
_U32_KEY = struct.Struct("=IIii")  # mask, val, off, offmask
_MIRRED = struct.Struct("=IIiiiiI")  # index, capab, action, refcnt, bindcnt, eaction, ifindex
_U64 = struct.Struct("=Q")
_S64 = struct.Struct("=q")
CHANGE = nl.NLM_F_REQUEST | nl.NLM_F_ACK
CREATE = CHANGE | nl.NLM_F_CREATE | nl.NLM_F_EXCL
REPLACE = CHANGE | nl.NLM_F_CREATE | nl.NLM_F_REPLACE
DUMP = nl.NLM_F_REQUEST | nl.NLM_F_DUMP


@dataclass(frozen=True)
class Shape:
    """What an interface's egress qdisc does: a rate (bit/s), and a delay with jitter (us; needs netem)."""

    rate: int | None = None
    delay_us: int = 0
    jitter_us: int = 0

    @property
    def kind(self) -> str:
        return "netem" if self.delay_us or self.jitter_us else "tbf"


@dataclass(frozen=True)
class Qdisc:
    """A qdisc read back: kind, handle and parent, and the rate / delay of the ones we make."""

    kind: str
    handle: int
    parent: int
    rate: int | None = None  # bit/s
    delay_us: int = 0
    jitter_us: int = 0

    @property
    def shape(self) -> Shape:
        return Shape(self.rate, self.delay_us, self.jitter_us)


# -- packing ---------------------------------------------------------------------------------------------------------


def _ratespec(rate_bytes: int) -> bytes:
    return _RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate_bytes, 0xFFFFFFFF))


def tbf_options(rate_bits: int) -> bytes:
    """TCA_OPTIONS of a tbf qdisc shaping to ``rate_bits`` (burst and queue sized from it)."""
    rate = rate_bits // 8
    burst = max(BURST_MIN, rate // HZ)
    limit = int(rate * QUEUE_SECONDS) + burst
    buffer_ticks = min(int(burst * 1e9 / rate) >> PSCHED_SHIFT, 0xFFFFFFFF)
    qopt = _ratespec(rate) + _RATESPEC.pack(0, 0, 0, 0, 0, 0) + _TBF_TAIL.pack(limit, buffer_ticks, 0)
    attrs = attr(TCA_TBF_PARMS, qopt) + attr_u32(TCA_TBF_BURST, burst)
    if rate > 0xFFFFFFFF:
        attrs += attr(TCA_TBF_RATE64, _U64.pack(rate))
    return attr(TCA_OPTIONS, attrs)


def netem_options(shape: Shape) -> bytes:
    """TCA_OPTIONS of a netem qdisc: its qopt struct, then attributes (not nested: netem's own layout)."""
    rate = (shape.rate or 0) // 8
    packets = 1000
    if rate:  # room for what the rate lets in over the delay, twice over
        packets = max(packets, int(rate * (shape.delay_us + shape.jitter_us) / 1e6 / 1500 * 2))
    ticks = (min((shape.delay_us * 1000) >> PSCHED_SHIFT, 0xFFFFFFFF), min((shape.jitter_us * 1000) >> PSCHED_SHIFT,
                                                                             0xFFFFFFFF))
    body = _NETEM_QOPT.pack(ticks[0], packets, 0, 0, 0, ticks[1])
    body += attr(TCA_NETEM_LATENCY64, _S64.pack(shape.delay_us * 1000))
    body += attr(TCA_NETEM_JITTER64, _S64.pack(shape.jitter_us * 1000))
    if rate:
        body += attr(TCA_NETEM_RATE, _NETEM_RATE.pack(min(rate, 0xFFFFFFFF), 0, 0, 0))
        if rate > 0xFFFFFFFF:
            body += attr(TCA_NETEM_RATE64, _U64.pack(rate))
    return attr(TCA_OPTIONS, body)


def qdisc_message(index: int, shape: Shape) -> bytes:
    """An RTM_NEWQDISC body for our root qdisc on link ``index``."""
    options = netem_options(shape) if shape.kind == "netem" else tbf_options(shape.rate or 0)
    return TCMSG.pack(index=index, handle=OURS, parent=TC_H_ROOT) + attr_str(TCA_KIND, shape.kind) + options


def redirect_message(index: int, parent: int, to_index: int) -> bytes:
    """An RTM_NEWTFILTER body: every packet of ingress ``parent`` redirected to the egress of ``to_index``."""
    selector = _U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + _U32_KEY.pack(0, 0, 0, 0)
    mirred = _MIRRED.pack(0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, to_index)
    action = attr(1, attr_str(TCA_ACT_KIND, "mirred") + attr(TCA_ACT_OPTIONS, attr(TCA_MIRRED_PARMS, mirred)))
    info = (OUR_PRIO << 16) | ((ETH_P_ALL & 0xFF) << 8 | ETH_P_ALL >> 8)  # priority, protocol (network order)
    return (TCMSG.pack(index=index, parent=parent, info=info) + attr_str(TCA_KIND, "u32")
            + attr(TCA_OPTIONS, attr(TCA_U32_SEL, selector) + attr(TCA_U32_ACT, action)))


def _proto(eth_p: int) -> int:
    return (eth_p & 0xFF) << 8 | eth_p >> 8  # a filter's protocol is in network order


def clsact_message(index: int) -> bytes:
    return TCMSG.pack(index=index, handle=INGRESS_HANDLE, parent=TC_H_INGRESS) + attr_str(TCA_KIND, "clsact")


def bpf_filter_message(index: int, parent: int, prog_fd: int, name: str) -> bytes:
    """An RTM_NEWTFILTER body: program ``prog_fd`` on ingress ``parent``, in direct-action mode, for IPv6 frames."""
    options = attr_u32(TCA_BPF_FD, prog_fd) + attr_str(TCA_BPF_NAME, name) + attr_u32(TCA_BPF_FLAGS,
                                                                                      TCA_BPF_FLAG_ACT_DIRECT)
    return (TCMSG.pack(index=index, handle=MLD_HANDLE, parent=parent, info=MLD_PRIO << 16 | _proto(ETH_P_IPV6))
            + attr_str(TCA_KIND, "bpf") + attr(TCA_OPTIONS, options))


# -- reading ---------------------------------------------------------------------------------------------------------


def _qdisc_from(msg: nl.Message) -> Qdisc:
    kind = msg.attrs.text(TCA_KIND) or ""
    found = Qdisc(kind, msg["handle"], msg["parent"])
    options = msg.attrs.blob(TCA_OPTIONS)
    if options is None:
        return found
    if kind == "tbf":
        attrs = nl.Attrs.parse(options, 0, len(options))
        parms, rate64 = attrs.blob(TCA_TBF_PARMS), attrs.blob(TCA_TBF_RATE64)
        rate = _U64.unpack(rate64)[0] if rate64 else (_RATESPEC.unpack_from(parms)[5] if parms else 0)
        return Qdisc(kind, found.handle, found.parent, rate * 8)
    if kind == "netem" and len(options) >= _NETEM_QOPT.size:
        attrs = nl.Attrs.parse(options, (_NETEM_QOPT.size + 3) & ~3, len(options))
        latency, jitter, rate = attrs.blob(TCA_NETEM_LATENCY64), attrs.blob(TCA_NETEM_JITTER64), attrs.blob(
            TCA_NETEM_RATE)
        rate64 = attrs.blob(TCA_NETEM_RATE64)
        bytes_s = _U64.unpack(rate64)[0] if rate64 else (_NETEM_RATE.unpack_from(rate)[0] if rate else 0)
        return Qdisc(kind, found.handle, found.parent, bytes_s * 8 or None,
                     _S64.unpack(latency)[0] // 1000 if latency else 0, _S64.unpack(jitter)[0] // 1000 if jitter else 0)
    return found


def qdiscs(channel: nl.Channel, index: int) -> list[Qdisc]:
    """The qdiscs of link ``index`` (the kernel may answer a dump of all links: we keep its own)."""
    msgs = channel.request(RTM_GETQDISC, DUMP, TCMSG, TCMSG.pack(index=index))
    return [_qdisc_from(m) for m in msgs if m["index"] == index]


def _ingress_parent(found: list[Qdisc]) -> int | None:
    """Where ingress filters hang: an ``ingress`` qdisc's ffff:, or a ``clsact``'s ingress hook."""
    for q in found:
        if q.parent == TC_H_INGRESS:
            return INGRESS_HANDLE if q.kind == "ingress" else INGRESS_HANDLE | TC_H_MIN_INGRESS
    return None


def redirect_of(channel: nl.Channel, index: int) -> int | None:
    """The link our ingress filter on link ``index`` redirects to (None: no filter of ours)."""
    parent = _ingress_parent(qdiscs(channel, index))
    if parent is None:
        return None
    for msg in channel.request(RTM_GETTFILTER, DUMP, TCMSG, TCMSG.pack(index=index, parent=parent)):
        if msg["info"] >> 16 != OUR_PRIO or msg["index"] != index:
            continue
        to = _mirred_target(msg)
        if to is not None:
            return to
    return None


def has_ingress_program(channel: nl.Channel, index: int, prog_name: str) -> bool:
    """Whether link ``index`` runs our program ``prog_name`` on what it receives (see ensure_ingress_program)."""
    parent = _ingress_parent(qdiscs(channel, index))
    if parent is None:
        return False
    for msg in channel.request(RTM_GETTFILTER, DUMP, TCMSG, TCMSG.pack(index=index, parent=parent)):
        options = msg.attrs.nested(TCA_OPTIONS) if msg["index"] == index and msg["info"] >> 16 == MLD_PRIO else None
        if options is not None and msg.attrs.text(TCA_KIND) == "bpf" and options.text(TCA_BPF_NAME) == prog_name:
            return True
    return False


def _mirred_target(msg: nl.Message) -> int | None:
    options = msg.attrs.nested(TCA_OPTIONS)
    actions = options.nested(TCA_U32_ACT) if options else None
    first = actions.nested(1) if actions else None
    parms = first.nested(TCA_ACT_OPTIONS) if first else None
    blob = parms.blob(TCA_MIRRED_PARMS) if parms else None
    return int(_MIRRED.unpack_from(blob)[6]) if blob and len(blob) >= _MIRRED.size else None


def _has_filters(channel: nl.Channel, index: int, parent: int) -> bool:
    return any(m["index"] == index and m.attrs.text(TCA_KIND)
               for m in channel.request(RTM_GETTFILTER, DUMP, TCMSG, TCMSG.pack(index=index, parent=parent)))


# -- changing --------------------------------------------------------------------------------------------------------


def _fail(operation: str, obj: str, label: str | None, e: NetlinkError) -> KernelError:
    cause = "the kernel has no such qdisc" if e.code == errno.ENOENT and "qdisc" in operation else None
    return KernelError(operation, obj, label, cause or os.strerror(e.code), errno=e.code)


def ensure_root(channel: nl.Channel, index: int, name: str, shape: Shape, label: str | None) -> None:
    """Our root qdisc on link ``index`` shapes as ``shape`` (read first: the same one stays untouched)."""
    root = next((q for q in qdiscs(channel, index) if q.parent == TC_H_ROOT), None)
    if root is not None and root.handle == OURS and root.kind == shape.kind and root.shape == shape:
        return
    if root is not None and root.handle != OURS and root.kind not in ("noqueue", "pfifo_fast", "mq", "fq_codel"):
        raise KernelError("shape", name, label, f"it has a root qdisc that is not ours ({root.kind})")
    try:
        channel.request(RTM_NEWQDISC, REPLACE, TCMSG, qdisc_message(index, shape))
    except NetlinkError as e:
        raise _fail(f"add {shape.kind} qdisc", f"on {name}", label, e) from e


def delete_root(channel: nl.Channel, index: int, name: str, label: str | None) -> None:
    """Our root qdisc on link ``index`` is gone (another's is left alone; none is success)."""
    root = next((q for q in qdiscs(channel, index) if q.parent == TC_H_ROOT), None)
    if root is None or root.handle != OURS:
        return
    try:
        channel.request(RTM_DELQDISC, CHANGE, TCMSG, TCMSG.pack(index=index, handle=OURS, parent=TC_H_ROOT))
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise _fail("delete qdisc", f"on {name}", label, e) from e


def ensure_redirect(channel: nl.Channel, index: int, name: str, to_index: int, label: str | None) -> None:
    """Ingress of link ``index`` redirected to the egress of link ``to_index`` (an ifb)."""
    if redirect_of(channel, index) == to_index:
        return
    parent = _ingress_parent(qdiscs(channel, index))
    try:
        if parent is None:
            body = TCMSG.pack(index=index, handle=INGRESS_HANDLE, parent=TC_H_INGRESS) + attr_str(TCA_KIND, "ingress")
            channel.request(RTM_NEWQDISC, CREATE, TCMSG, body)
            parent = INGRESS_HANDLE
        _delete_our_filter(channel, index, parent)
        channel.request(RTM_NEWTFILTER, CREATE, TCMSG, redirect_message(index, parent, to_index))
    except NetlinkError as e:
        raise _fail("redirect ingress of", name, label, e) from e


def ensure_ingress_program(channel: nl.Channel, index: int, name: str, prog_fd: int, prog_name: str,
                           label: str | None) -> None:
    """Program ``prog_fd`` filters the IPv6 frames link ``index`` receives (added blind: a new link has none).

    Two requests on a new veth; on one that has them already (an ``up`` repairing a
    sandbox) each answers EEXIST and nothing changes.
    """
    parent = INGRESS_HANDLE | TC_H_MIN_INGRESS
    try:
        if not _created(channel, RTM_NEWQDISC, clsact_message(index)):
            parent = _ingress_parent(qdiscs(channel, index)) or parent
        _created(channel, RTM_NEWTFILTER, bpf_filter_message(index, parent, prog_fd, prog_name))
    except NetlinkError as e:
        raise _fail("filter ingress of", name, label, e) from e


def _created(channel: nl.Channel, msg_type: int, body: bytes) -> bool:
    """Whether the request made its object (False: one of that identity was there already)."""
    try:
        channel.request(msg_type, CREATE, TCMSG, body)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise
        return False
    return True


def _delete_our_filter(channel: nl.Channel, index: int, parent: int) -> None:
    info = (OUR_PRIO << 16) | 0x0300
    try:
        channel.request(RTM_DELTFILTER, CHANGE, TCMSG, TCMSG.pack(index=index, parent=parent, info=info))
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.EINVAL):
            raise


def delete_redirect(channel: nl.Channel, index: int, name: str, label: str | None) -> None:
    """Our ingress filter on link ``index`` is gone, and the ingress qdisc with it if nothing else uses it."""
    found = qdiscs(channel, index)
    parent = _ingress_parent(found)
    if parent is None:
        return
    try:
        _delete_our_filter(channel, index, parent)
        if parent == INGRESS_HANDLE and not _has_filters(channel, index, parent):
            channel.request(RTM_DELQDISC, CHANGE, TCMSG, TCMSG.pack(index=index, handle=INGRESS_HANDLE,
                                                                     parent=TC_H_INGRESS))
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ENODEV):
            raise _fail("stop redirecting ingress of", name, label, e) from e


# -- what this kernel has --------------------------------------------------------------------------------------------

_known: dict[str, bool] = {}


@contextmanager
def _scratch_channel() -> Iterator[nl.Channel]:
    """A netlink channel in a new namespace of its own, which goes with the channel."""
    channel = nl.Channel(netns.scratch_socket())
    try:
        yield channel
    finally:
        channel.close()


def has_qdisc(kind: str) -> bool:
    """Whether the kernel has qdisc ``kind`` (tried once per process on loopback of a scratch namespace)."""
    if kind not in _known:
        shape = Shape(delay_us=1000) if kind == "netem" else Shape(rate=8_000_000)
        with _scratch_channel() as channel:
            try:
                channel.request(RTM_NEWQDISC, CREATE, TCMSG, qdisc_message(1, shape) if shape.kind == kind else
                                TCMSG.pack(index=1, handle=OURS, parent=TC_H_ROOT) + attr_str(TCA_KIND, kind))
                _known[kind] = True
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise KernelError("try qdisc", kind, "a scratch namespace", str(e), errno=e.code) from e
                _known[kind] = False
    return _known[kind]
