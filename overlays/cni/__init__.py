"""CNI plugin mode: container runtimes (podman, containerd) put their containers on overlays networks.

A runtime execs ``overlays-cni`` once per verb with the CNI environment and the
network's configuration on stdin, as the CNI spec says. What it execs is the launcher
``overlays cni install`` writes: a thin client that hands the verb to a resident server
of ours, or does it itself when none answers. The parts, top to bottom:

    client     the thin client (built-in modules only, run by ``python -I -S``) and its wire format
    server     the resident process: one verb at a time through ``protocol.handle`` on engines kept
               open; DEL answered first and done before the next request; gone with the last attachment
    main       one verb in this process: os.environ and stdin in, stdout and the exit code out
               (the console script, and the client's fallback, which then starts a server)
    protocol   pure: (environment, stdin bytes) -> (stdout bytes, exit code); the spec's
               variables, versions, verbs, errors and result shapes (as containernetworking/cni's
               pkg/skel, testable without a process)
    config     the plugin's own configuration (which engine, capabilities, static address)
    plugin     ADD, DEL, CHECK, GC and STATUS done through the public Engine API: an attachment is
               a sandbox adopting the runtime's namespace, with its endpoint and ports, in one call
    names      the sandbox name and labels of an attachment (container id, ifname, network)
    conflist   the conflist ``overlays cni install`` writes, and the launcher in the CNI bin dir

Done in one process, the plugin imports only what ADD needs: ``overlays.cni`` is cheap to
import, and the engine is loaded by the verbs that change something.
"""
