"""The bench's one timing loop: run something N times, keep every sample, summarise.

A sample is a mapping of named figures (``wall`` seconds, or a pod's ``rss_mib`` ...),
so one loop serves commands timed from exec to exit as well as pods measured at rest.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any, Protocol, TypeVar

Sample = Mapping[str, float]
T = TypeVar("T")
B = TypeVar("B", bound="Bench")


class BenchError(Exception):
    """Something the bench needs did not work; the message says what."""


class CommandFailed(BenchError):
    def __init__(self, argv: Sequence[str], status: int, output: str) -> None:
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"{' '.join(argv)} exited with {status}" + (f":\n{tail}" if tail else ""))
        self.argv = list(argv)
        self.status = status
        self.output = output

    @property
    def reason(self) -> str:
        """The last line the command printed (usually its error), else its exit status."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.status}"


@dataclass(frozen=True)
class Stats:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise BenchError("no samples to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Series:
    """Every sample of one measurement, in the order taken."""

    name: str
    samples: list[dict[str, float]]
    warmup: int

    def values(self, key: str = "wall") -> list[float]:
        return [sample[key] for sample in self.samples if key in sample]

    def stats(self, key: str = "wall") -> Stats:
        return Stats.of(self.values(key))

    def median(self, key: str = "wall") -> float:
        return self.stats(key).median

    def to_json(self) -> dict[str, Any]:
        keys = sorted({key for sample in self.samples for key in sample})
        return {
            "name": self.name,
            "warmup": self.warmup,
            "samples": self.samples,
            "stats": {key: asdict(self.stats(key)) for key in keys},
        }


def repeat(name: str, runs: int, once: Callable[[], Sample], warmup: int = 0) -> Series:
    """Call ``once`` ``warmup`` times unrecorded, then ``runs`` times; progress goes to stderr."""
    print(f"[bench] {name}: ", end="", file=sys.stderr, flush=True)
    for _ in range(warmup):
        once()
        print("w ", end="", file=sys.stderr, flush=True)
    samples: list[dict[str, float]] = []
    try:
        for _ in range(runs):
            sample = dict(once())
            samples.append(sample)
            key = "wall" if "wall" in sample else next(iter(sample), "")
            print(f"{'' if key == 'wall' else key + '='}{sample.get(key, 0.0):.2f} ", end="", file=sys.stderr,
                  flush=True)
    finally:
        print(file=sys.stderr, flush=True)
    return Series(name, samples, warmup)


def timed(argv: Sequence[str], *, timeout: float = 120.0) -> tuple[float, str]:
    """Run ``argv`` to completion: wall seconds from exec to exit, and its combined output.

    A non-zero exit raises: a failed run timed as fast would flatter the figures.
    """
    begun = time.perf_counter()
    try:
        result = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"{' '.join(argv)} did not finish within {timeout:.0f}s") from err
    wall = time.perf_counter() - begun
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        raise CommandFailed(argv, result.returncode, output)
    return wall, output


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: unwind through every ``finally``."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


class HasLog(Protocol):
    def log_tail(self, lines: int = 20) -> str: ...


class Bench(Protocol):
    """What ``main`` needs of a benchmark: its daemon's log for errors, and a cleanup that always runs."""

    @property
    def daemon(self) -> HasLog: ...

    def cleanup(self) -> None: ...


def main(bench: Callable[[], B], measure: Callable[[B], T], report: Callable[[B, T], None], *,
         errors: tuple[type[Exception], ...] = (BenchError,)) -> int:
    """A benchmark's life: as root, ``measure`` then ``report``; on any error, Ctrl-C or SIGTERM,
    one line and the daemon's log, and the cleanup always (not cut short by a second Ctrl-C)."""
    if os.geteuid() != 0:
        print("bench: must run as root (hyperd boots VMs)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    made = bench()
    try:
        results = measure(made)
    except KeyboardInterrupt as interrupt:
        print("\nbench: interrupted; cleaning up", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
    except errors as err:
        print(f"bench: {err}", file=sys.stderr)
        print(f"hyperd's log, last lines:\n{made.daemon.log_tail()}", file=sys.stderr)
        return 1
    finally:
        # Every step of the cleanup has a timeout of its own.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        made.cleanup()
    report(made, results)
    return 0
