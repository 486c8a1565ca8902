"""Processes overlays starts in sandboxes: what they inherit, and that none outlives its record.

A process begins as a fresh program would (no signal blocked, none ignored), carries our tag,
and is either recorded or gone: whatever a killed start, a forking command or an ``rm -f`` racing
a ``run -d`` leaves, the next ``rm`` or start stops.
"""

from __future__ import annotations

import json
import platform
import subprocess
import threading
from pathlib import Path

import pytest

from overlays import Engine
from overlays.engine import sandboxes
from overlays.kernel import process, procs
from overlays.model.specs import SandboxSpec

from .conftest import Cli


def signal_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines) if k in ("SigBlk", "SigIgn")}


def ours(engine: Engine, name: str) -> list[int]:
    return [pid for pid, _ in procs.of_sandbox(engine.instance, name)]


def test_a_started_process_has_no_signal_blocked_or_ignored(cli: Cli) -> None:
    cli("run", "-d", "--name", "s", "--network", "none", "--", "sleep", "60", check=True)
    pid = int(json.loads(cli("inspect", "s", "--json", check=True).stdout)["pid"])
    assert signal_fields(pid) == {"SigBlk": "0" * 16, "SigIgn": "0" * 16}
    # exec and a foreground run wait with SIGINT ignored: their command must not inherit that.
    shown = cli("exec", "s", "--", "cat", "/proc/self/status", check=True).stdout
    assert f"SigIgn:\t{'0' * 16}" in shown and f"SigBlk:\t{'0' * 16}" in shown, shown
    cli("rm", "-f", "s", check=True)
    assert process.start_time(pid) is None


def ignoring_glibc_signals() -> None:
    """Ignore 32 and 33 as some parents do (CI runners have): glibc's own sigaction cannot, so by number."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ignore = ctypes.create_string_buffer(64)
    ctypes.c_ulong.from_buffer(ignore).value = 1  # SIG_IGN
    for sig in (32, 33):
        assert libc.syscall(13, sig, ignore, None, 8) == 0, ctypes.get_errno()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="rt_sigaction by number is x86-64's here")
def test_signals_a_parent_left_ignored_even_glibcs_own_are_not_passed_on(cli: Cli) -> None:
    run = cli.argv("run", "-d", "--name", "g", "--network", "none", "--", "sleep", "60")
    done = subprocess.run(run, env=cli.env, preexec_fn=ignoring_glibc_signals, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    pid = int(json.loads(cli("inspect", "g", "--json", check=True).stdout)["pid"])
    assert signal_fields(pid)["SigIgn"] == "0" * 16
    cli("rm", "-f", "g", check=True)


def test_rm_stops_what_the_command_forked_too(engine: Engine) -> None:
    engine.create_sandbox(SandboxSpec("f"))
    engine.start("f", ["sh", "-c", "sleep 300 & sleep 300"])
    for _ in range(100):  # the shell has forked its background sleep
        if len(ours(engine, "f")) >= 2:
            break
        threading.Event().wait(0.02)
    assert len(ours(engine, "f")) >= 2
    engine.remove_sandbox("f", force=True)
    assert ours(engine, "f") == []


def test_a_process_a_killed_start_left_unrecorded_is_stopped(engine: Engine) -> None:
    """The state a SIGKILL between the start and its recording leaves: rm, or the next start, ends it."""
    for then in ("rm", "start"):
        box = engine.create_sandbox(SandboxSpec("k"))
        sandboxes._startable(engine.ctx, "k", ["sleep", "300"])  # the command recorded, no pid yet
        orphan = process.spawn_detached(engine.namespace_path(box.netns), ["sleep", "300"], None,
                                        engine.log_dir() / "k.log", env=procs.environment(engine.instance, "k"))
        assert ours(engine, "k") == [orphan]
        if then == "start":
            pid = engine.start("k", ["sleep", "300"])
            assert ours(engine, "k") == [pid] and pid != orphan
        engine.remove_sandbox(box.name, force=True)
        assert ours(engine, "k") == []


def test_run_d_racing_rm_f_never_leaves_a_process_unrecorded(cli: Cli, host: str, state_dir: Path) -> None:
    engine = Engine(host_netns=host, state_dir=state_dir)
    try:
        for _ in range(12):
            run = subprocess.Popen(cli.argv("run", "-d", "--name", "r", "--network", "none", "--", "sleep", "300"),
                                   env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            removed = cli("rm", "-f", "r")
            _, err = run.communicate(timeout=30)
            assert "Traceback" not in err + removed.stderr and "internal error" not in err + removed.stderr
            running = ours(engine, "r")
            box = next((b for b in engine.sandboxes() if b.name == "r"), None)
            if box is not None:
                assert running == ([box.pid] if box.pid else []), (running, box)
                cli("rm", "-f", "r", check=True)
            else:
                assert running == [], f"sandbox r is gone but its process {running} runs"
    finally:
        engine.close()
