"""Real hyperd daemons booting real micro-VMs, for the integration tests.

Every test here is marked ``vm``; the whole directory is skipped (with the reason) where
it cannot run: not root, or no QEMU, guest kernel or guest disk.  One session daemon is
shared by the tests that only need *a* daemon; ``make_daemon`` gives a test its own (a bad
kernel, a restart, a second daemon on one root).  Every daemon's teardown checks that it
left no QEMU process and removed its socket; every ``hyper`` fixture removes the
containers its test made and checks that their VMs are gone.  When a test fails, its
report carries the daemons' log tails and the guest consoles of their containers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARE = Path("/usr/local/share/hyper")
KERNEL = Path(os.environ.get("HYPER_KERNEL", SHARE / "vmlinux"))
GUEST = Path(os.environ.get("HYPER_GUEST", SHARE / "guest.erofs"))
QEMU = "qemu-system-x86_64"
BIN = Path(sys.executable).parent

CLI_TIMEOUT = 120.0
"""Seconds any one ``hyper`` command may take; a boot is ~2.5 s under TCG, the boot timeout 60 s."""
READY_TIMEOUT = 120.0
"""Seconds for a daemon to answer ``hyper version`` (includes a first KVM probe, ~5 s)."""
STOP_TIMEOUT = 60.0
"""Seconds for a daemon to exit after SIGTERM (it stops its pods: 5 s each at worst, in parallel)."""
VM_GONE_TIMEOUT = 10.0
"""Seconds for a pod's QEMU to disappear after the command that ended it returned."""
LOG_LINES = 60
CONSOLE_LINES = 30


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests boot micro-VMs and need root"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (apt-get install qemu-system-x86)"
    if not KERNEL.is_file():
        return f"guest kernel {KERNEL} not found (make kernel, or set HYPER_KERNEL)"
    if not GUEST.is_file():
        return f"guest disk {GUEST} not found (make guest, or set HYPER_GUEST)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    for item in items:
        if not item.path.resolve().is_relative_to(HERE):
            continue
        item.add_marker(pytest.mark.vm)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def _console_script(name: str) -> str:
    found = shutil.which(name, path=str(BIN))
    if found is None:
        pytest.fail(f"{name} is not installed next to {sys.executable} (make venv)")
    return found


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError as err:
        return f"({path}: {err.strerror})"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def pod_qemus() -> dict[int, list[str]]:
    """Every running pod QEMU on this machine (``-name hyper-...``), by pid."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if not argv or not Path(argv[0]).name.startswith("qemu-system"):
            continue
        names = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-name"]
        if any(name.startswith("hyper-") for name in names):
            found[int(entry.name)] = argv
    return found


def terminate(process: subprocess.Popen[bytes]) -> bool:
    """SIGTERM a process we started, SIGKILL it after STOP_TIMEOUT; whether it went in time."""
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False


@dataclass
class Daemon:
    """One hyperd subprocess with its own root and socket."""

    base: Path
    root: Path
    kernel: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    socket_path: Path | None = None
    """Default: ``base/hyperd.sock``."""
    netns: str | None = None
    """The network namespace hyperd runs in; without one it runs in ours with ``--bridge none``, so that
    it makes no bridge, tap or rule in the host's namespace."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.socket_path or self.base / "hyperd.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.base / "hyperd.log"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the daemon is not running"
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [_console_script("hyperd"), "-H", self.host, "--root", str(self.root)]
        if self.kernel is not None:
            argv += ["--kernel", str(self.kernel)]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else [*argv, "--bridge", "none"]

    def in_netns(self, *argv: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the daemon's network namespace (where its pods' ports are published)."""
        assert self.netns, "this daemon has no network namespace of its own"
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def import_busybox(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "hyperd.image.busybox", "--root", str(self.root)],
            cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"importing busybox into {self.root} failed:\n{result.stdout}{result.stderr}")

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start hyperd without waiting for it (see ``start``)."""
        assert self.process is None or self.process.poll() is not None, "the daemon is already running"
        self.base.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        return self.process

    def start(self) -> None:
        """Start hyperd and wait until ``hyper version`` answers; on failure nothing is left running."""
        process = self.spawn()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"hyperd exited with status {process.returncode} at start-up:\n{self.log_tail()}")
            if self.hyper("version", timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        process.kill()
        process.wait()
        pytest.fail(f"hyperd did not answer within {READY_TIMEOUT:.0f}s:\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM and wait; then check that the daemon left no VM and no socket behind."""
        process = self.process
        assert process is not None, "the daemon was never started"
        if not terminate(process):
            pytest.fail(f"hyperd ignored SIGTERM for {STOP_TIMEOUT:.0f}s:\n{self.log_tail()}")
        self.assert_no_qemu("after hyperd exited")
        assert not self.socket.exists(), f"hyperd did not remove its socket {self.socket}"
        return process.returncode

    def qemus(self) -> dict[int, list[str]]:
        """This daemon's pod QEMUs: children of the live daemon, or (orphans too) booting a disk from its root."""
        root = f"{self.root}/"
        parent = self.process.pid if self.process is not None and self.process.poll() is None else None
        return {pid: argv for pid, argv in pod_qemus().items()
                if _ppid(pid) == parent or any(root in arg for arg in argv)}

    def wait_no_qemu(self, timeout: float = VM_GONE_TIMEOUT) -> dict[int, list[str]]:
        """This daemon's QEMUs still running after ``timeout`` seconds (empty when all went)."""
        deadline = time.monotonic() + timeout
        while (left := self.qemus()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def assert_no_qemu(self, when: str) -> None:
        """Fail if this daemon's QEMUs outlive ``VM_GONE_TIMEOUT``, killing them first: no VM outlives a test."""
        leaked = self.wait_no_qemu()
        for pid in leaked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leaked, f"QEMU still running {when}: " + "; ".join(
            f"pid {pid}: {' '.join(argv[:3])}" for pid, argv in leaked.items())

    def hyper(self, *args: str, timeout: float = CLI_TIMEOUT,
              env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``hyper ARGS`` against this daemon; ``env`` values of None unset a variable."""
        return subprocess.run([self.cli, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=self.cli_env(env), timeout=timeout, check=False)

    @property
    def cli(self) -> str:
        """The ``hyper`` console script."""
        return _console_script("hyper")

    def cli_env(self, env: Mapping[str, str | None] | None = None) -> dict[str, str]:
        """Our environment with ``HYPER_HOST`` pointing at this daemon, ``env`` applied (None unsets)."""
        environ = {**os.environ, "HYPER_HOST": self.host}
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        return environ

    def log_tail(self, lines: int = LOG_LINES) -> str:
        return _tail(self.log, lines)

    def consoles(self, lines: int = CONSOLE_LINES) -> list[tuple[str, str]]:
        """(container id, last lines of its guest console) for every container dir still on disk."""
        found = sorted((self.root / "containers").glob("*/vm/console.log"), key=lambda p: p.stat().st_mtime)
        return [(path.parents[1].name, _tail(path, lines)) for path in found]

    def report(self) -> list[tuple[str, str]]:
        """Report sections for a failed test: the daemon's log tail, then its guests' consoles."""
        sections = [(f"hyperd log ({self.log})", self.log_tail())]
        for cid, console in self.consoles():
            sections.append((f"guest console of {cid[:12]}", console))
            sections.append((f"qemu.log of {cid[:12]}", _tail(self.root / "containers" / cid / "vm" / "qemu.log",
                                                             CONSOLE_LINES)))
        return sections


class Hyper:
    """The ``hyper`` CLI against one daemon; removes the containers made through it at teardown."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.before = set(self.ids())
        self.volumes_before = set(self.volumes())

    def __call__(self, *args: str, timeout: float = CLI_TIMEOUT,
                 env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
        return self.daemon.hyper(*args, timeout=timeout, env=env)

    def ids(self) -> list[str]:
        result = self.daemon.hyper("ps", "-aq", "--no-trunc")
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    def volumes(self) -> list[str]:
        result = self.daemon.hyper("volume", "ls", "-q")
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    def cleanup(self) -> None:
        made = [cid for cid in self.ids() if cid not in self.before]
        if made:
            result = self.daemon.hyper("rm", "-f", *made)
            assert result.returncode == 0, f"could not remove {made}: {result.stderr}"
        volumes = [name for name in self.volumes() if name not in self.volumes_before]
        if volumes:
            result = self.daemon.hyper("volume", "rm", *volumes)
            assert result.returncode == 0, f"could not remove volumes {volumes}: {result.stderr}"
        self.daemon.assert_no_qemu("after the test's containers were removed")


class DaemonFactory:
    """``make_daemon()``: a daemon of the test's own, stopped and checked at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[Daemon] = []
        self.namespaces: list[str] = []

    def __call__(self, *, root: Path | None = None, kernel: Path | None = None, socket: Path | None = None,
                 env: Mapping[str, str] | None = None, start: bool = True, netns: bool = False) -> Daemon:
        base = self.base / f"hyperd{len(self.made)}"
        daemon = Daemon(base=base, root=root or base / "root", kernel=kernel, env=dict(env or {}), socket_path=socket,
                        netns=self.netns() if netns else None)
        self.made.append(daemon)
        if root is None:
            daemon.import_busybox()
        if start:
            daemon.start()
        return daemon

    def netns(self) -> str:
        """A network namespace of this test's own, loopback up; deleted at teardown."""
        name = f"hyper-test-{os.getpid()}-{len(self.namespaces)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return name

    def close(self) -> None:
        failures = []
        for daemon in self.made:
            if daemon.process is None:
                continue
            try:
                daemon.stop()
            except (AssertionError, pytest.fail.Exception) as err:
                failures.append(f"{daemon.base}: {err}")
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], check=False)
        if failures:
            pytest.fail("\n".join(failures))


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The shared hyperd, busybox:latest imported into its root before it starts."""
    base = tmp_path_factory.mktemp("hyperd")
    daemon = Daemon(base=base, root=base / "root")
    daemon.import_busybox()
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def hyper(daemon: Daemon) -> Iterator[Hyper]:
    """The CLI against the session daemon; its containers are removed (``rm -f``) after the test."""
    client = Hyper(daemon)
    yield client
    client.cleanup()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    factory = DaemonFactory(tmp_path)
    yield factory
    factory.close()


def _daemons(item: pytest.Item) -> list[Daemon]:
    found: list[Daemon] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Daemon):
            found.append(value)
        elif isinstance(value, Hyper):
            found.append(value.daemon)
        elif isinstance(value, DaemonFactory):
            found.extend(value.made)
    return list({id(d): d for d in found}.values())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the log tails and guest consoles of the daemons it used."""
    report = yield
    if report.failed:
        for daemon in _daemons(item):
            report.sections.extend(daemon.report())
    return report


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def lines(text: str) -> list[str]:
    return text.splitlines()


def ps_row(ps_output: str, name: str) -> str:
    """The ``hyper ps`` row of the container named ``name``; fails if there is none."""
    rows = [row for row in ps_output.splitlines()[1:] if row.split() and row.split()[-1] == name]
    assert len(rows) == 1, f"expected one row for {name} in:\n{ps_output}"
    return rows[0]


__all__: Sequence[str] = ["Daemon", "DaemonFactory", "Hyper", "lines", "pod_qemus", "ps_row", "wait_for"]
