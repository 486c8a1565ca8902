"""The only code that talks to Linux.

Import the submodules directly, so each command loads only what it uses. pyroute2
(about 200 ms to import) is loaded only for the overlay control plane's VXLAN, FDB
and neighbour writes (``rtnl.Rtnl._pyroute2``); attaching a sandbox never loads it.
"""
