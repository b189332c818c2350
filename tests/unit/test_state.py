"""Container lifecycle states and their persistence (no VM)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from hyperd.errors import InvalidArgument, StateError
from hyperd.state import Container, ContainerSpec, ContainerState, Database, parse_signal, signal_name

SPEC = ContainerSpec(image="busybox", image_id="sha256:" + "a" * 64, args=("echo", "hi"), env=("A=b",),
                     autoremove=True, cmd=("echo", "hi"))


def test_a_created_container_runs_exits_and_is_removed() -> None:
    container = Container(id="c" * 64, name="web", spec=SPEC)
    container.transition(ContainerState.RUNNING, "start")
    container.transition(ContainerState.EXITED, "stop")
    container.transition(ContainerState.RUNNING, "start")
    container.transition(ContainerState.EXITED, "stop")
    container.transition(ContainerState.REMOVING, "remove")
    assert container.state == ContainerState.REMOVING


@pytest.mark.parametrize("state, target", [
    (ContainerState.RUNNING, ContainerState.REMOVING),
    (ContainerState.CREATED, ContainerState.EXITED),
    (ContainerState.REMOVING, ContainerState.RUNNING),
])
def test_forbidden_transitions_raise_and_change_nothing(state: ContainerState, target: ContainerState) -> None:
    container = Container(id="c" * 64, name="web", spec=SPEC, state=state)
    with pytest.raises(StateError, match="cannot frob container web"):
        container.transition(target, "frob")
    assert container.state == state


def test_containers_survive_a_reopen(tmp_path: Path) -> None:
    db = Database(tmp_path / "hyper.db")
    container = Container(id="c" * 64, name="web", spec=SPEC, state=ContainerState.EXITED, exit_code=7,
                          timings={"agent_ready": 1.5})
    db.save(container)
    container.exit_code = 9
    db.save(container)
    db.close()
    (loaded,) = Database(tmp_path / "hyper.db").load()
    assert loaded == Container(id="c" * 64, name="web", spec=SPEC, state=ContainerState.EXITED, exit_code=9,
                               created=container.created, timings={"agent_ready": 1.5})


def test_names_are_unique(tmp_path: Path) -> None:
    db = Database(tmp_path / "hyper.db")
    db.save(Container(id="a" * 64, name="web", spec=SPEC))
    with pytest.raises(Exception, match="UNIQUE"):
        db.save(Container(id="b" * 64, name="web", spec=SPEC))


@pytest.mark.parametrize(("name", "number"), [
    ("SIGUSR1", signal.SIGUSR1), ("usr1", signal.SIGUSR1), ("15", 15), ("QUIT", signal.SIGQUIT),
    ("SIGRTMIN+3", signal.SIGRTMIN + 3), ("SIGRTMAX-1", signal.SIGRTMAX - 1),
])
def test_signals_by_name_or_number(name: str, number: int) -> None:
    assert parse_signal(name) == number


@pytest.mark.parametrize("name", ["NOPE", "0", "99", "SIGRTMIN+x", ""])
def test_an_invalid_signal_is_one_clear_error(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid signal"):
        parse_signal(name)


def test_signal_names_for_inspect() -> None:
    assert (signal_name(signal.SIGTERM), signal_name(signal.SIGRTMIN + 2)) == ("SIGTERM", str(signal.SIGRTMIN + 2))
