"""CNI plugin mode: container runtimes (podman, containerd) put their containers on overlays networks.

A runtime execs ``overlays-cni`` once per verb with the CNI environment and the
network's configuration on stdin, as the CNI spec says. The parts, top to bottom:

    main       the process: os.environ and stdin in, stdout and the exit code out
    protocol   pure: (environment, stdin bytes) -> (stdout bytes, exit code); the spec's
               variables, versions, verbs, errors and result shapes (as containernetworking/cni's
               pkg/skel, testable without a process)
    config     the plugin's own configuration (which engine, capabilities, static address)
    plugin     ADD, DEL, CHECK, GC and STATUS done through the public Engine API: a container is
               an adopted sandbox (its namespace stays the runtime's), connected to the network
    names      the sandbox name of an attachment (container id, ifname), so DEL finds it directly
    conflist   the conflist ``overlays cni install`` writes, and the links into the CNI bin dir

The plugin imports only what ADD needs: ``overlays.cni`` is cheap to import, and the
engine is loaded by the verbs that change something.
"""
