"""The JSON Schema of topology files (``overlays schema``), for editors to complete and check.

It describes the same shape that spec.py enforces; a test checks every example
against both, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$", "maxLength": 63}
CIDR = {"type": "string", "description": "an IPv4 subnet, e.g. 10.10.0.0/24"}
IP = {"type": "string", "description": "an IPv4 address"}
IP6 = {"type": "string", "description": "an IPv6 address, e.g. fd00:10::5"}
SUBNETS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}],
           "description": "an IPv4 or IPv6 subnet, or a list of one of each (dual-stack); only IPv6: IPv6-only",
           "examples": ["10.10.0.0/24", ["10.10.0.0/24", "fd00:10::/64"]]}
GATEWAYS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}],
            "description": "the gateway of each family's subnet (default: its first host address)"}
PORT = {
    "type": ["string", "integer"],
    "description": "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], ranges like 8000-8010:8000-8010",
    "examples": ["8080:80", "127.0.0.1:5432:5432", "5353:53/udp"],
}

NETWORK = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "driver": {"enum": ["bridge", "overlay", "macvlan"], "default": "bridge",
                   "description": "bridge: per host; overlay: one L2 network across hosts (VXLAN); "
                                  "macvlan: sandboxes straight on the segment of a host interface (parent)"},
        "parent": {"type": "string", "maxLength": 15, "description": "macvlan: the host interface to share"},
        "vni": {"type": "integer", "minimum": 1, "maximum": 16777215, "description": "overlay: VXLAN id"},
        "subnet": SUBNETS,
        "gateway": GATEWAYS,
        "ipv6": {"type": "boolean", "default": False,
                 "description": "dual-stack: an IPv6 pool too (a free /64 unless subnet lists one)"},
        "ip_range": CIDR,
        "mtu": {"type": "integer", "minimum": 576, "maximum": 65535, "default": 1500},
        "internal": {"type": "boolean", "default": False, "description": "no route out, no published ports"},
        "masquerade": {"type": "boolean", "default": True, "description": "false: routed, addresses leave as-is"},
        "hosts": {"type": "array", "items": NAME, "description": "hosts that have this network (default: all)"},
        "dns": {"type": "array", "items": {"type": "string", "description": "an IP address"},
                "description": "resolvers for names that are not the network's own (default: the host's)"},
    },
}

SANDBOX = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "host": NAME,
        "networks": {
            "oneOf": [
                {"type": "array", "items": NAME},
                {
                    "type": "object",
                    "additionalProperties": {
                        "type": ["object", "null"],
                        "additionalProperties": False,
                        "properties": {"ip": IP, "ip6": IP6, "mac": {"type": "string", "description": "a static MAC"},
                                       "aliases": {"type": "array", "items": {"type": "string"},
                                                   "description": "more names it answers to on this network"}},
                    },
                },
            ]
        },
        "ports": {"type": "array", "items": PORT},
        "command": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "hostname": {"type": "string"},
    },
}


PERCENT = {"type": ["number", "string"], "description": "percent of packets, like 10 or 0.5%"}
MILLIS = {"type": ["number", "string"], "description": "milliseconds"}
GROUP = {"oneOf": [{"type": "array", "items": NAME, "minItems": 1},
                   {"type": "string", "description": "a comma list of names"}]}
FAULT = {
    "type": "object",
    "additionalProperties": False,
    "description": "a partition (groups of sandboxes, or in a lab hosts) or an impairment of one endpoint",
    "oneOf": [{"required": ["partition"], "not": {"required": ["impair"]}},
              {"required": ["impair"], "not": {"required": ["partition"]}}],
    "properties": {
        "enabled": {"type": "boolean", "default": True, "description": "false: declared, not in force"},
        "partition": {"type": "array", "items": GROUP, "minItems": 2,
                      "description": "groups cut from each other, like [[n1], [n2, n3]]"},
        "oneway": {"type": "boolean", "default": False, "description": "only the first group's packets are dropped"},
        "impair": {**NAME, "description": "the sandbox whose endpoint is impaired"},
        "network": {**NAME, "description": "which of its networks (needed if it has several)"},
        "loss": PERCENT,
        "duplicate": PERCENT,
        "rate": {"type": "string", "description": "like 10mbit, 500kbit, 1gbit"},
        "delay": {**MILLIS, "description": "milliseconds (needs the kernel's netem)"},
        "jitter": {**MILLIS, "description": "milliseconds (needs the kernel's netem)"},
        "direction": {"enum": ["in", "out", "both"], "default": "both"},
    },
}


def topology_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "overlays topology",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": NAME,
            "hosts": {
                "oneOf": [
                    {"type": "array", "items": {**NAME, "maxLength": 10}},
                    {"type": "object", "additionalProperties": {"type": ["object", "null"], "maxProperties": 0}},
                ],
                "description": "simulated hosts of a lab, each a network namespace on a shared fabric",
            },
            "fabric": {**CIDR, "default": "10.254.0.0/24", "description": "the lab's underlay subnet"},
            "outside": {"type": ["boolean", "object", "null"], "description": "a peer playing the internet/client"},
            "networks": {"type": "object", "additionalProperties": NETWORK},
            "sandboxes": {"type": "object", "additionalProperties": SANDBOX},
            "faults": {"type": "object", "additionalProperties": FAULT,
                       "description": "partitions and impairments, each applied by up while enabled"},
        },
    }
