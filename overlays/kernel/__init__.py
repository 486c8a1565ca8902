"""The only code that talks to Linux.

Import the submodules directly: ``rtnl`` pulls in pyroute2 (about 110 ms), which
commands that only read state must not pay for.
"""
