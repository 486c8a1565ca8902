"""The command line without root: parsing, error codes, and what a read-only command imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import overlays
from overlays.cli import main as cli
from overlays.cli.main import MODULES, Command, Group, main
from overlays.model import specs, state


def parse(command: str, *args: str) -> object:
    return cli._command(command).parser(f"overlays {command}").parse_args(list(args))


def test_every_command_is_defined_where_the_table_says() -> None:
    for name in MODULES:
        entry = cli._command(name)
        assert isinstance(entry, Command | Group), name
        assert entry.help, f"{name} has no help"
        entry.parser(f"overlays {name}")  # declares its arguments without error


def test_help_lists_every_command_in_the_tour_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out.split("\ncommands:\n")[1].splitlines()
    assert [line.split()[0] for line in listed] == list(MODULES)


@pytest.mark.parametrize(
    ("args", "cmd"),
    [
        (["--name", "a", "--", "sh", "-c", "exit 3"], ("sh", "-c", "exit 3")),
        (["--name", "a", "sh", "-c", "exit 3"], ("sh", "-c", "exit 3")),  # options end at CMD's first word
        (["-d", "sleep", "--network", "x"], ("sleep", "--network", "x")),
        (["--", "--name"], ("--name",)),
        ([], ()),
    ],
)
def test_run_takes_everything_after_its_options_as_the_command(args: list[str], cmd: tuple[str, ...]) -> None:
    assert parse("run", *args).cmd == cmd  # type: ignore[attr-defined]


def test_run_options_repeat() -> None:
    a = parse("run", "--network", "one", "--network", "two", "-p", "80:80", "-p", "53:53/udp", "-d", "--", "x")
    assert (a.networks, a.publish, a.detach) == (["one", "two"], ["80:80", "53:53/udp"], True)  # type: ignore[attr-defined]


def test_network_create_flags() -> None:
    a = parse("network", "create", "n", "--no-masquerade", "-d", "overlay", "--mtu", "1400")
    assert (a.name, a.masquerade, a.driver, a.mtu, a.internal) == ("n", False, "overlay", 1400, False)  # type: ignore[attr-defined]
    assert parse("network", "create", "n").masquerade is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "args",
    [
        ["nosuch"],
        ["exec", "box"],  # no command to run
        ["exec", "box", "--"],
        ["rm"],
        ["network"],
        ["network", "create", "n", "--driver", "foo"],
        ["agent", "--ttl", "0"],
        ["ps", "extra"],
        ["--host-netns"],
    ],
)
def test_a_command_line_that_does_not_parse_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    assert "usage: overlays" in capsys.readouterr().err


def test_no_command_prints_the_list_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "\ncommands:\n" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["run", "--rm", "-d", "--", "true"], 125),  # run and exec: 125, their own codes are the command's
        (["--node", "bad/node", "ps"], 1),
        (["trace", "a", "b", "--port", "80/sctp"], 1),
        (["trace", "nosuch", "b"], 1),
        (["--explain", "trace", "nosuch", "10.0.0.1:http"], 1),
    ],
)
def test_our_errors_are_one_line_with_the_exit_code(
    args: list[str], code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--state-dir", str(tmp_path), *args]) == code
    err = capsys.readouterr().err
    assert err.startswith("overlays: error: ") and err.count("\n") == 1


def test_version_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"overlays, version {overlays_version()}\n"


def overlays_version() -> str:
    from importlib.metadata import version

    return version("overlays")


def test_ps_imports_neither_pyroute2_nor_what_only_changes_need(tmp_path: Path) -> None:
    """``ps`` is mostly start-up: it must not load the netlink library, the spec classes, the
    drivers, or the modules of other commands (the benchmark times it; this says why it is fast)."""
    code = (
        "import json, sys\n"
        "from overlays.cli.main import main\n"
        "assert main(['ps', '--json']) == 0\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    env = dict(os.environ, OVERLAYS_STATE_DIR=str(tmp_path))
    env.pop("OVERLAYS_HOST_NETNS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    loaded = set(json.loads(done.stderr.splitlines()[-1]))
    for module in ["pyroute2", "click", "overlays.kernel.rtnl", "overlays.model.specs", "overlays.drivers",
                   "overlays.engine.sandboxes", "overlays.cli.networks", "overlays.cli.topology", "overlays.agent"]:
        assert module not in loaded, f"ps imported {module}"
    assert "overlays.cli.sandboxes" in loaded  # the check above would pass vacuously if ps had not run


def test_the_package_loads_its_names_on_first_use() -> None:
    assert overlays.Network is state.Network is specs.Network
    assert overlays.NetworkSpec is specs.NetworkSpec
    assert overlays.Engine.__name__ == "Engine"
    from overlays import ipam  # submodules still import through the package

    assert ipam.__name__ == "overlays.ipam"
    with pytest.raises(AttributeError):
        _ = overlays.nosuch  # type: ignore[attr-defined]
