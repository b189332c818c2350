"""``make bench``: how long ``hyper run --rm busybox true`` takes, against plain QEMU and podman.

    .venv/bin/python bench/run.py [--runs N] [--pods N] [--json FILE]

Starts a hyperd of its own (scratch root and socket, busybox imported), measures, and
leaves nothing behind: no daemon, no VM, no container, no scratch directory, even on
Ctrl-C or failure.  Reports figures only; no threshold makes it fail.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import host
import measure
from daemon import Hyperd
from floor import Floor
from measure import BenchError, CommandFailed, Sample, Series, repeat, timed
from peer import PeerUnavailable, Podman
from report import PHASES, Results, render
from scratch import Scratch
from usage import at_rest, resident

RUNNING_TIMEOUT = 30.0


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Scratch) -> None:
        self.args = args
        self.daemon = Hyperd(scratch / "hyperd")
        self.podman = Podman(scratch.path)
        self.scratch = scratch
        self._names: Iterator[int] = itertools.count(1)

    def _name(self) -> str:
        return f"bench-{os.getpid()}-{next(self._names)}"

    # -- the measurements ---------------------------------------------------------------

    def hyper_rm(self) -> Sample:
        wall, _ = timed(self.daemon.hyper("run", "--rm", "busybox", "true"))
        return {"wall": wall}

    def hyper_phased(self) -> Sample:
        """``hyper run`` without --rm, so that its timings can be read back, then removed."""
        name = self._name()
        wall, _ = timed(self.daemon.hyper("run", "--name", name, "busybox", "true"))
        state = self.daemon.inspect(name)["State"]
        timed(self.daemon.hyper("rm", name))
        timings = dict(state.get("Timings") or {})
        missing = [key for key, _ in PHASES if not isinstance(timings.get(key), int | float)]
        if state.get("ExitCode") != 0 or missing:
            raise BenchError(f"container {name}: exit code {state.get('ExitCode')}, timings {timings} "
                             f"(missing {', '.join(missing) or 'none'})")
        return {"wall": wall, **{key: float(timings[key]) for key, _ in PHASES}}

    def cli(self) -> Sample:
        wall, _ = timed(self.daemon.hyper("version"))
        return {"wall": wall}

    def idle_pod(self) -> Sample:
        name = self._name()
        timed(self.daemon.hyper("run", "-d", "--name", name, "busybox", "sleep", "3600"))
        pid = self._running_vm(name)
        rest = at_rest(pid, self.args.settle, self.args.window)
        # A burst: the container takes 100 MB and frees it; what the VM keeps of it afterwards
        # is what free page reporting did not give back to the host.
        timed(self.daemon.hyper("exec", name, "sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a)"))
        peak = resident(pid)["rss_mib"]
        time.sleep(self.args.settle)
        after = resident(pid)
        sample = {**rest, "burst_rss_mib": peak, "after_burst_rss_mib": after["rss_mib"],
                  "after_burst_guest_ram_rss_mib": after["guest_ram_rss_mib"]}
        # On failure hyperd's shutdown stops the pod; on success it goes now, before the next one.
        timed(self.daemon.hyper("rm", "-f", name))
        return sample

    def _running_vm(self, name: str) -> int:
        deadline = time.monotonic() + RUNNING_TIMEOUT
        while True:
            state = self.daemon.inspect(name)["State"]
            pid = state.get("Pid")
            if state.get("Running") and isinstance(pid, int) and pid > 0:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                if b"qemu-system" not in argv0:
                    raise BenchError(f"pid {pid} of {name} is {argv0!r}, not QEMU")
                return pid
            if time.monotonic() > deadline or state.get("Status") == "exited":
                raise BenchError(f"{name} is not running: {state}")
            time.sleep(0.1)

    # -- the whole run ------------------------------------------------------------------

    def run(self) -> Results:
        runs = self.args.runs
        machine = host.facts()
        machine["load_average"] = host.load_average()
        others = set(host.other_vms(self.scratch.path))
        self.daemon.start()
        info = self.daemon.info()
        machine.update(
            accelerator=info.get("Accelerator", "?"), accelerator_reason=info.get("AcceleratorReason", "?"),
            qemu_version=info.get("HypervisorVersion", "?"), qemu_binary=info.get("HypervisorBinary", "?"),
            guest_kernel=info.get("Kernel", "?"), guest_disk=info.get("GuestDisk", "?"),
        )
        floor = Floor(machine["qemu_binary"], machine["accelerator"], Path(machine["guest_kernel"]),
                      Path(machine["guest_disk"]), self.scratch.path)

        cli = repeat("hyper version", runs, self.cli, warmup=1)
        hyper_rm = repeat("hyper run --rm busybox true", runs, self.hyper_rm, warmup=1)
        hyper_phased = repeat("hyper run busybox true + inspect + rm", runs, self.hyper_phased, warmup=1)
        floor_series = repeat("plain QEMU boot to /probe", runs, floor.boot, warmup=1)
        peer, peer_note = self._peer(runs)
        if peer is not None:
            machine["podman"] = f"{self.podman.version}, {self.podman.runtime}, a store of its own in the scratch dir"
        idle = repeat("idle pod", self.args.pods, self.idle_pod)
        others |= set(host.other_vms(self.scratch.path))
        machine["load_average_end"] = host.load_average()
        notes = []
        if others:
            notes.append(f"note: {len(others)} QEMU process(es) not the bench's own ran on this host meanwhile "
                         f"(pids {', '.join(map(str, sorted(others)))}): they share the cores, figures may be noisy")
        return Results(runs=runs, machine=machine, cli=cli, hyper_rm=hyper_rm, hyper_phased=hyper_phased,
                       floor=floor_series, floor_argv=floor.argv, idle=idle, settle=self.args.settle,
                       window=self.args.window, peer=peer, peer_note=peer_note, peer_command=self.podman.command,
                       peer_passed_over=self.podman.passed_over, notes=notes)

    def _peer(self, runs: int) -> tuple[Series | None, str]:
        """Podman's figures, or why there are none: the peer never fails the bench."""
        try:
            self.podman.setup()
            return repeat("podman run --rm --network none busybox true", runs, self.podman.run, warmup=1), ""
        except PeerUnavailable as err:
            reason = str(err)
        except CommandFailed as err:
            reason = f"podman run failed: {err.reason}"
        except BenchError as err:
            reason = f"podman run failed: {err}"
        print(f"[bench] peer skipped: {reason}", file=sys.stderr)
        return None, reason

    def cleanup(self) -> None:
        """Each step on its own, so that one failing does not keep the others from running."""
        for step in (self.podman.cleanup, self.daemon.stop, self.scratch.remove):
            try:
                step()
            except Exception as err:  # report and go on: the rest must still be cleaned
                print(f"[bench] cleanup: {step.__qualname__} failed: {err}", file=sys.stderr)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="runs per boot figure (default 10)")
    parser.add_argument("--pods", type=int, default=3, help="idle pods to measure (default 3)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds an idle pod rests before measuring")
    parser.add_argument("--window", type=float, default=10.0, help="seconds over which idle CPU is measured")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every sample to FILE")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.pods < 1:
        parser.error("--runs and --pods must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def report(_bench: Bench, results: Results) -> None:
        print(render(results))
        if args.json:
            args.json.write_text(json.dumps(results.to_json(), indent=2) + "\n")
            print(f"\nraw numbers: {args.json}")

    return measure.main(lambda: Bench(args, Scratch()), Bench.run, report)


if __name__ == "__main__":
    sys.exit(main())
