"""The ``overlays`` command: global options, error handling, command groups.

Errors from overlays become one line on stderr and exit code 1 (125 for ``run``
and ``exec``, whose own codes pass through the command's, as Docker does); a
command line that does not parse gets its usage and exit code 2. Signals are held
while an operation changes state, so Ctrl-C cannot leave a half-built sandbox: it
takes effect once the step list is done or rolled back.

Start-up is most of what a read-only command costs (``overlays ps`` reads a few
rows), so the parser is the standard library's argparse (importing click took
about 20 ms, a fifth of ``ps``), and only the command that runs is imported and
has its parser built. Each command module holds a table of its commands: a
handler (its docstring is the help) and a function that declares its arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any

from overlays.errors import OverlaysError

HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
FOREGROUND_COMMANDS = {"run", "exec"}

# Where each command lives, in the order help lists them (a tour, not the alphabet).
MODULES = {
    "network": "overlays.cli.networks",
    "run": "overlays.cli.sandboxes",
    "ps": "overlays.cli.sandboxes",
    "inspect": "overlays.cli.sandboxes",
    "port": "overlays.cli.sandboxes",
    "rm": "overlays.cli.sandboxes",
    "connect": "overlays.cli.sandboxes",
    "disconnect": "overlays.cli.sandboxes",
    "exec": "overlays.cli.sandboxes",
    "attach": "overlays.cli.sandboxes",
    "up": "overlays.cli.topology",
    "plan": "overlays.cli.topology",
    "down": "overlays.cli.topology",
    "check": "overlays.cli.topology",
    "schema": "overlays.cli.topology",
    "partition": "overlays.cli.faults",
    "heal": "overlays.cli.faults",
    "impair": "overlays.cli.faults",
    "link": "overlays.cli.faults",
    "agent": "overlays.cli.agent",
    "doctor": "overlays.cli.doctor",
    "trace": "overlays.cli.trace",
    "graph": "overlays.cli.view",
    "ui": "overlays.cli.view",
    "cni": "overlays.cli.cni",
}
GLOBAL_OPTIONS = {  # option: (environment variable, metavar, help)
    "--host-netns": ("OVERLAYS_HOST_NETNS", "NAME",
                     "Network namespace that plays the host (default: the real machine)."),
    "--state-dir": ("OVERLAYS_STATE_DIR", "DIR", "Where state is kept (default: /var/lib/overlays)."),
    "--store": ("OVERLAYS_STORE", "URL",
                "State shared by hosts: etcd://HOST:PORT[,...] or a SQLite file (default: in the state dir)."),
    "--node": ("OVERLAYS_NODE", "NAME",
               "This host's name in a shared store (default: the host namespace's, else the machine's)."),
}
EXPLAIN_ENV = "OVERLAYS_EXPLAIN"
EXPLAIN_HELP = ("Print, as they happen, the ip, bridge, sysctl and nft commands that make the same changes by hand "
                f"(env {EXPLAIN_ENV}=1); the command's own messages become # comments, so the output is a script.")


class Settings:
    """Global options, and the engine they describe (built on first use).

    Every engine (and lab) the command makes works on the kernel through ``kernel()``:
    with --explain, a recorder prints each kernel step's command as it happens; the
    steps of a command that changed something are kept in the host's journal of recent
    operations (see view.operations), which ``overlays ui`` shows.
    """

    def __init__(self, host_netns: str | None, state_dir: str | None, store: str | None = None,
                 node: str | None = None, explain: bool = False) -> None:
        self.host_netns = host_netns
        self.state_dir = state_dir
        self.store = store
        self.node = node
        self.explain = explain
        self._engine: Any = None
        self._kernel: Any = None

    def kernel(self) -> Any:
        """The kernel every engine of this command uses: the real one, recording its steps."""
        if self._kernel is None:
            from overlays.kernel.explain import Explaining, Recorder
            from overlays.kernel.linux import LinuxKernel

            self._kernel = Explaining(LinuxKernel(), Recorder(_print_step if self.explain else None))
        return self._kernel

    def engine(self) -> Any:
        if self._engine is None:
            from overlays.engine import Engine

            state = Path(self.state_dir) if self.state_dir else None
            self._engine = Engine(host_netns=self.host_netns, state_dir=state, store_url=self.store, node=self.node,
                                  kernel=self.kernel())
        return self._engine

    def journal(self, command: str, error: str | None = None) -> None:
        """Keep the kernel steps recorded since the last call as one operation of this host's journal."""
        steps = self._kernel.recorder.take() if self._kernel is not None else []
        if not steps:
            return
        from overlays.engine import DEFAULT_STATE_DIR, default_node
        from overlays.view import operations

        state = Path(self.state_dir or os.environ.get("OVERLAYS_STATE_DIR") or DEFAULT_STATE_DIR)
        node = self.node or os.environ.get("OVERLAYS_NODE") or default_node(self.host_netns)
        with contextlib.suppress(OSError):  # a journal that cannot be written never fails the command
            operations.append(state, node, command, steps, error)

    def close(self, command: str = "", error: str | None = None) -> None:
        try:
            self.journal(command, error)
        finally:
            if self._engine is not None:
                self._engine.close()


def _print_step(command: str) -> None:
    print(command, flush=True)


Handler = Callable[[Settings, argparse.Namespace], "int | None"]
Arguments = Callable[[argparse.ArgumentParser], None]


def no_arguments(p: argparse.ArgumentParser) -> None:
    """For commands that take none."""


def json_flag(p: argparse.ArgumentParser) -> None:
    """``--json``, for the commands that can print JSON."""
    p.add_argument("--json", dest="as_json", action="store_true", help="Print JSON.")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, at a fixed width as click had (80 columns at most): argparse would ask
    ``shutil`` for the terminal's at each argument declared, and importing shutil (with the
    three compression modules it pulls in) is 4 ms of every command's start."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=78)


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


class Command:
    """One command: what it does (``handler``, whose docstring is its help) and the arguments it takes."""

    def __init__(self, handler: Handler, arguments: Arguments = no_arguments) -> None:
        self.handler = handler
        self.arguments = arguments
        self.help = (handler.__doc__ or "").strip()

    def parser(self, prog: str) -> argparse.ArgumentParser:
        p = new_parser(prog, self.help)
        p.set_defaults(handler=self.handler)
        self.arguments(p)
        return p


class Group:
    """Commands under one name (``overlays network create``)."""

    def __init__(self, help: str, commands: dict[str, Command]) -> None:
        self.help = help
        self.commands = commands

    def parser(self, prog: str) -> argparse.ArgumentParser:
        p = new_parser(prog, self.help)
        sub = p.add_subparsers(title="commands", metavar="COMMAND", required=True)
        for name, command in self.commands.items():
            one = sub.add_parser(name, help=summary(command.help), description=command.help,
                                 formatter_class=HelpFormatter)
            one.set_defaults(handler=command.handler)
            command.arguments(one)
        return p


def summary(text: str) -> str:
    """The first line of a help text."""
    return text.split("\n", 1)[0]


@contextmanager
def held_signals() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP until the block is done (they are delivered after)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _command(name: str) -> Command | Group:
    entry: Command | Group = import_module(MODULES[name]).COMMANDS[name]
    return entry


class _TopParser(argparse.ArgumentParser):
    """Lists the commands in its help, importing their modules only then."""

    def format_help(self) -> str:
        width = max(map(len, MODULES))
        lines = [f"  {name.ljust(width)}  {summary(_command(name).help)}" for name in MODULES]
        return super().format_help() + "\ncommands:\n" + "\n".join(lines) + "\n"


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import version

        print(f"overlays, version {version('overlays')}")
        parser.exit()


def _top_parser() -> argparse.ArgumentParser:
    p = _TopParser(prog="overlays", description="overlays: container networks from real Linux parts.\n\n"
                   "Bridges, veth pairs, namespaces and addresses, one command each.", formatter_class=HelpFormatter)
    for option, (env, metavar, text) in GLOBAL_OPTIONS.items():
        p.add_argument(option, metavar=metavar, default=os.environ.get(env), help=text)
    p.add_argument("--explain", action="store_true", default=os.environ.get(EXPLAIN_ENV, "") not in ("", "0"),
                   help=EXPLAIN_HELP)
    p.add_argument("--version", action=_Version, nargs=0, help="Show the version and exit.")
    p.add_argument("command", metavar="COMMAND", choices=MODULES, help="One of the commands below.")
    p.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER, help="Its arguments (overlays COMMAND -h).")
    return p


def _command_of(args: list[str]) -> str | None:
    """The subcommand named in ``args``, skipping the global options and their values."""
    rest = iter(args)
    for arg in rest:
        if arg in GLOBAL_OPTIONS:
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


@contextmanager
def _start_up(own_process: bool) -> Iterator[None]:
    """Loading a command makes tens of thousands of objects (modules, classes, functions)
    that all live until exit. In a process of its own, the cyclic garbage collector stays
    off meanwhile (its passes over them were ~3 ms of ``overlays ps``), and they are then
    frozen: out of its sight for good, at exit too, before it is back on for the command."""
    if not own_process:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _run(args: list[str], own_process: bool) -> int:
    top = _top_parser()
    if not args:  # as git does: the list of commands, and a usage error
        top.print_help(sys.stderr)
        return 2
    with _start_up(own_process):
        given = top.parse_args(args)
        parsed = _command(given.command).parser(f"overlays {given.command}").parse_args(given.args)
    settings = Settings(given.host_netns or None, given.state_dir, given.store or None, given.node or None,
                        given.explain)
    if given.explain:
        from overlays.cli import render

        render.comment_output()
    error = None
    try:
        result = parsed.handler(settings, parsed)
    except BaseException as e:
        error = str(e) or type(e).__name__
        raise
    finally:
        settings.close(" ".join(["overlays", given.command, *given.args]), error)
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Entry point: run the CLI and turn our errors into one clear line.

    ``own_process``: this process is the command (``run``), so start-up may tune the
    garbage collector for a process that ends with the command.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        return _run(args, own_process)
    except OverlaysError as e:
        print(f"overlays: error: {e}", file=sys.stderr)
        return 125 if _command_of(args) in FOREGROUND_COMMANDS else 1
    except KeyboardInterrupt:
        print("\noverlays: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``overlays ps | head -1``): stop quietly with 1. What is left
        # in stdout's buffer goes to /dev/null, so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # never a traceback: one line, and the way to see more
        if os.environ.get("OVERLAYS_DEBUG"):
            raise
        return _unexpected(e, _command_of(args))


def _unexpected(e: Exception, command: str | None) -> int:
    """What nothing above turned into an OverlaysError: the system's refusal, or a bug of ours."""
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        print(f"overlays: error: {e.strerror}{where}", file=sys.stderr)
        return 125 if command in FOREGROUND_COMMANDS else 1
    print(f"overlays: internal error: {type(e).__name__}: {' '.join(str(e).split())} (a bug of overlays: please "
          "report it; OVERLAYS_DEBUG=1 shows where)", file=sys.stderr)
    return 70  # EX_SOFTWARE


def run() -> None:
    """The ``overlays`` command: the console script, and ``python -m overlays``."""
    code = main(own_process=True)
    # What is still alive now lives until exit, where the interpreter's last garbage
    # collections would walk all of it (the modules the command itself imported, such as
    # the drivers of ``run``): frozen, they skip it. Objects alive at exit are not promised
    # their finalizers anyway; files and the store were closed by the command.
    gc.freeze()
    sys.exit(code)
