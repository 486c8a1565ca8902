"""The host's DNS server: sandbox names and aliases per network, the rest forwarded.

``DnsServer`` (in ``server``) is run by the agent; the engine talks to it through
``overlays.kernel.dnsctl`` (register / unregister), which sits below the engine.
"""

from overlays.dns.server import DnsServer, Registration

__all__ = ["DnsServer", "Registration"]
