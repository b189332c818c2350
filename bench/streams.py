"""``make bench`` (I/O): a container's stdout, exec latency, and data on bind mounts and volumes.

    .venv/bin/python bench/streams.py [--runs N] [--stdio-mib 1024] [--data-mib 256] [--json FILE]

Measures, in one run, against baselines taken in the same run:

- stdio: ``hyper run --rm busybox cat /dev/zero | head -c SIZE``, the bench being the
  ``head``: MB/s from the first byte to the last (the boot is left out), with the default
  json-file log and with ``--log-driver none``; the baselines are the same command under
  podman and the same bytes through a host pipe;
- exec latency: ``hyper exec CONTAINER true`` into a running container, wall time of the
  whole command (the CLI's own start included), against ``podman exec``;
- data: ``dd`` in the guest writing SIZE MiB (fsync'd) to a bind mount (virtio-9p), to a
  named volume (its own ext4 disk) and to the container's root (its own writable disk),
  then a second container, or the same one started again (a fresh VM, so a cold guest
  cache), reading it back; and to the tmpfs root of a ``--rm`` container, read back in the
  same VM; the host's own ``dd`` to the same directory is the baseline for writes.

Starts its own hyperd under a scratch directory and leaves nothing behind. Reports
figures only; no threshold makes it fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import measure
from daemon import Hyperd
from measure import BenchError, CommandFailed, Sample, Series, Stats, repeat, timed
from peer import PeerUnavailable, Podman
from scratch import Scratch

MB = 1_000_000
READ_CHUNK = 1 << 20
STDIO_TIMEOUT = 600.0
TIMED = re.compile(r"^took ([0-9.]+) ([0-9.]+)$", re.MULTILINE)
"""What ``timed_in_guest`` prints: the guest's uptime before and after (busybox's dd prints no rate)."""


def timed_in_guest(command: str) -> str:
    """A shell line running ``command`` between two readings of the guest's clock (1/100 s)."""
    return (f"t0=$(cut -d' ' -f1 /proc/uptime); {command} 2>/dev/null; "
            "echo took $t0 $(cut -d' ' -f1 /proc/uptime)")


def stream_rate(argv: list[str], size: int) -> Sample:
    """MB/s of ``argv``'s stdout from its first byte to its ``size``-th, as ``| head -c SIZE`` reads it;
    then ``argv`` (our child, an endless writer) is ended."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               bufsize=0)
    assert process.stdout is not None
    deadline = time.monotonic() + STDIO_TIMEOUT
    try:
        first = process.stdout.read(READ_CHUNK)
        begun = time.perf_counter()
        received = len(first)
        while received < size and (chunk := process.stdout.read(min(READ_CHUNK, size - received))):
            received += len(chunk)
            if time.monotonic() > deadline:
                raise BenchError(f"{' '.join(argv)} did not write {size} bytes within {STDIO_TIMEOUT:.0f}s")
        elapsed = time.perf_counter() - begun
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if received != size:
        errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
        raise CommandFailed(argv, process.returncode, f"{received} of {size} bytes\n{errors}")
    return {"mb_s": (received - len(first)) / MB / elapsed}


@contextlib.contextmanager
def removed_after(rm: list[str]) -> Iterator[None]:
    """Run ``rm`` (a ``rm -f`` of a named container) at the end, however the measurement ended:
    a container runs on without its client, as docker's does."""
    try:
        yield
    finally:
        subprocess.run(rm, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False)


def rates(output: str, size: int) -> list[float]:
    """MB/s of each ``timed_in_guest`` command in ``output`` that moved ``size`` bytes."""
    found = [float(end) - float(start) for start, end in TIMED.findall(output)]
    if not found or min(found) <= 0:
        raise BenchError(f"no usable timing in {output[-300:]!r}")
    return [size / MB / elapsed for elapsed in found]


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Scratch) -> None:
        self.args = args
        self.scratch = scratch
        self.daemon = Hyperd(scratch / "hyperd")
        self.podman = Podman(scratch.path)
        self.notes: list[str] = []
        self.running = ""
        self.podman_running = ""

    # -- stdio and exec -----------------------------------------------------------------

    def stdio(self) -> dict[str, Series]:
        size, runs = self.args.stdio_mib << 20, self.args.runs
        command = ("cat", "/dev/zero")

        def hyper(*flags: str) -> Sample:
            name = f"bench-stdio-{time.monotonic_ns()}"
            with removed_after(self.daemon.hyper("rm", "-f", name)):
                return stream_rate(self.daemon.hyper("run", "--rm", "--name", name, *flags, "busybox", *command), size)

        def podman() -> Sample:
            name = f"bench-stdio-{time.monotonic_ns()}"
            with removed_after(self.podman.podman("rm", "-f", name)):
                return stream_rate(self.podman.argv(*command, name=name), size)

        series = {"stdio_hyper": repeat("stdout of hyper run --rm (MB/s)", runs, hyper, warmup=1),
                  "stdio_nolog": repeat("the same, --log-driver none (MB/s)", runs,
                                        partial(hyper, "--log-driver", "none"), warmup=1),
                  "stdio_pipe": repeat("the same bytes through a host pipe (MB/s)", runs,
                                       lambda: stream_rate(list(command), size))}
        if self.podman.run_argv:
            series["stdio_podman"] = repeat("stdout of podman run --rm (MB/s)", runs, podman, warmup=1)
        return series

    def exec_latency(self) -> dict[str, Series]:
        runs = self.args.runs * 4
        self.running = f"bench-io-{time.monotonic_ns()}"
        timed(self.daemon.hyper("run", "-d", "--name", self.running, "busybox", "sleep", "3600"))
        series = {"exec_hyper": repeat("hyper exec CONTAINER true", runs, lambda: self._timed(
            self.daemon.hyper("exec", self.running, "true")), warmup=2)}
        if self.podman.run_argv:
            _, output = timed(self.podman.argv("sleep", "3600", detach=True))
            self.podman_running = output.strip().splitlines()[-1]
            series["exec_podman"] = repeat("podman exec CONTAINER true", runs, lambda: self._timed(
                self.podman.exec_argv(self.podman_running, "true")), warmup=2)
        timed(self.daemon.hyper("rm", "-f", self.running))
        self.running = ""
        return series

    @staticmethod
    def _timed(argv: list[str]) -> Sample:
        wall, _ = timed(argv)
        return {"wall": wall}

    # -- data -------------------------------------------------------------------------------

    def data(self) -> dict[str, Series]:
        count = self.args.data_mib
        size = count << 20
        shared = self.scratch / "shared"
        shared.mkdir()
        volume = f"bench-io-{time.monotonic_ns()}"
        write = timed_in_guest(f"dd if=/dev/zero of=/data/f bs=1M count={count} conv=fsync")
        read = timed_in_guest("dd if=/data/f of=/dev/null bs=1M")
        places = {"bind": ("-v", f"{shared}:/data"), "volume": ("-v", f"{volume}:/data")}

        def through(flags: tuple[str, ...]) -> Sample:
            _, written = timed(self.daemon.hyper("run", "--rm", *flags, "busybox", "sh", "-c", write), timeout=600)
            _, back = timed(self.daemon.hyper("run", "--rm", *flags, "busybox", "sh", "-c", f"{read}; rm /data/f"),
                            timeout=600)
            return {"write_mb_s": rates(written, size)[0], "read_mb_s": rates(back, size)[0]}

        def in_root() -> Sample:
            _, output = timed(self.daemon.hyper("run", "--rm", "busybox", "sh", "-c",
                                                f"mkdir /data; {write}; {read}"), timeout=600)
            written, back = rates(output, size)
            return {"write_mb_s": written, "read_mb_s": back}

        def in_disk() -> Sample:
            name = f"bench-io-{time.monotonic_ns()}"
            script = f"if [ -e /data/f ]; then {read}; else mkdir /data; {write}; fi"
            with removed_after(self.daemon.hyper("rm", "-f", name)):
                _, written = timed(self.daemon.hyper("run", "--name", name, "busybox", "sh", "-c", script),
                                   timeout=600)
                _, back = timed(self.daemon.hyper("start", "-a", name), timeout=600)
            return {"write_mb_s": rates(written, size)[0], "read_mb_s": rates(back, size)[0]}

        def on_host() -> Sample:
            wall, _ = timed(["dd", "if=/dev/zero", f"of={shared}/f", "bs=1M", f"count={count}", "conv=fsync"])
            (shared / "f").unlink()
            return {"write_mb_s": size / MB / wall}

        runs = self.args.runs
        series = {f"data_{place}": repeat(f"dd through a {place} mount", runs, partial(through, flags))
                  for place, flags in places.items()}
        series["data_disk"] = repeat("dd in the container's root, its own disk", runs, in_disk)
        series["data_tmpfs"] = repeat("dd in a --rm container's tmpfs root", runs, in_root)
        series["data_host"] = repeat("dd on the host, same directory", runs, on_host)
        timed(self.daemon.hyper("volume", "rm", volume))
        return series

    # -- the whole run ------------------------------------------------------------------

    def measure(self) -> dict[str, Series]:
        self.daemon.start()
        try:
            self.podman.setup()
        except PeerUnavailable as err:
            self.notes.append(f"podman baseline skipped: {err}")
        return {**self.stdio(), **self.exec_latency(), **self.data()}

    def cleanup(self) -> None:
        if self.podman_running:
            subprocess.run(self.podman.podman("rm", "-f", self.podman_running), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
        self.podman.cleanup()
        self.daemon.stop()
        self.scratch.remove()


def _row(label: str, stats: Stats, unit: str) -> str:
    return f"  {label:<56} {stats.median:9.1f} {unit}  (min {stats.low:.1f}, max {stats.high:.1f}, n={stats.n})"


def render(series: dict[str, Series], args: argparse.Namespace, notes: list[str]) -> str:
    stats = {name: s.stats("mb_s") for name, s in series.items() if name.startswith("stdio")}
    lines = [f"stdio: {args.stdio_mib} MiB written by the container, read from the CLI's stdout (median, min, max)"]
    lines.append(_row("hyper run --rm busybox cat /dev/zero | head -c SIZE", stats["stdio_hyper"], "MB/s"))
    lines.append(_row("the same with --log-driver none", stats["stdio_nolog"], "MB/s"))
    if "stdio_podman" in stats:
        lines.append(_row("podman run --rm (baseline)", stats["stdio_podman"], "MB/s"))
    lines.append(_row("a host pipe (baseline)", stats["stdio_pipe"], "MB/s"))
    lines.append(f"  {'ratio hyper / host pipe':<56} {stats['stdio_hyper'].median / stats['stdio_pipe'].median:9.3f} x")
    lines += ["", "exec latency: the whole command, its CLI's start included"]
    lines.append(_row("hyper exec CONTAINER true", Stats.of([v * 1000 for v in series["exec_hyper"].values()]),
                      "ms"))
    if "exec_podman" in series:
        lines.append(_row("podman exec CONTAINER true (baseline)",
                          Stats.of([v * 1000 for v in series["exec_podman"].values()]), "ms"))
    lines += ["", f"data: dd of {args.data_mib} MiB (write with fsync, then read in a fresh VM; timed by the guest's "
              "clock, 1/100 s)"]
    for name, label in (("data_bind", "bind mount (virtio-9p)"), ("data_volume", "named volume (ext4 disk)"),
                        ("data_disk", "the container's root (its own ext4 disk)"),
                        ("data_tmpfs", "a --rm container's tmpfs root (read in the same VM)")):
        lines.append(_row(f"{label}, write", series[name].stats("write_mb_s"), "MB/s"))
        lines.append(_row(f"{label}, read", series[name].stats("read_mb_s"), "MB/s"))
    lines.append(_row("the host's dd to the bind's directory, write (baseline)", series["data_host"].stats(
        "write_mb_s"), "MB/s"))
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/streams.py", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5; exec takes 4 times more)")
    parser.add_argument("--stdio-mib", type=int, default=1024, help="MiB the container writes (default 1024)")
    parser.add_argument("--data-mib", type=int, default=256, help="MiB dd writes and reads (default 256)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every sample to FILE")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.stdio_mib < 1 or args.data_mib < 1:
        parser.error("--runs, --stdio-mib and --data-mib must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def report(bench: Bench, series: dict[str, Series]) -> None:
        print(render(series, args, bench.notes))
        if args.json:
            args.json.write_text(json.dumps({name: s.to_json() for name, s in series.items()}, indent=2) + "\n")

    return measure.main(lambda: Bench(args, Scratch()), Bench.measure, report)


if __name__ == "__main__":
    sys.exit(main())
