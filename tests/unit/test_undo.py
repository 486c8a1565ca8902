"""Setup rolls back newest first; teardown keeps going; both report what failed."""

from __future__ import annotations

from overlays.undo import Undo, best_effort


def _fail(message: str) -> None:
    raise RuntimeError(message)


def test_rollback_runs_newest_first() -> None:
    ran: list[str] = []
    undo = Undo()
    for step in ["bridge", "veth", "address"]:
        undo.push(f"undo {step}", ran.append, step)
    assert undo.rollback() == []
    assert ran == ["address", "veth", "bridge"]


def test_rollback_keeps_going_past_a_failure_and_reports_it() -> None:
    ran: list[str] = []
    undo = Undo()
    undo.push("delete bridge", ran.append, "bridge")
    undo.push("delete veth", _fail, "device busy")
    undo.push("release address", ran.append, "address")
    assert undo.rollback() == ["delete veth: device busy"]
    assert ran == ["address", "bridge"]


def test_rollback_reports_every_failure_newest_first() -> None:
    undo = Undo()
    undo.push("one", _fail, "first")
    undo.push("two", _fail, "second")
    assert undo.rollback() == ["two: second", "one: first"]


def test_rollback_runs_each_step_once() -> None:
    ran: list[str] = []
    undo = Undo()
    undo.push("step", ran.append, "x")
    undo.rollback()
    assert undo.rollback() == []
    assert ran == ["x"]


def test_forget_drops_the_steps() -> None:
    ran: list[str] = []
    undo = Undo()
    undo.push("step", ran.append, "x")
    undo.forget()
    assert undo.rollback() == []
    assert ran == []


def test_best_effort_runs_every_step_in_order_and_reports_failures() -> None:
    ran: list[str] = []
    failures = best_effort(
        [
            ("delete veth", lambda: ran.append("veth")),
            ("delete netns", lambda: _fail("no such file")),
            ("delete bridge", lambda: ran.append("bridge")),
            ("forget record", lambda: _fail("store busy")),
        ]
    )
    assert ran == ["veth", "bridge"]
    assert failures == ["delete netns: no such file", "forget record: store busy"]


def test_best_effort_with_nothing_failing() -> None:
    assert best_effort([("noop", lambda: None)]) == []
    assert best_effort([]) == []
