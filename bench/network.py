"""``make bench`` (network): TCP throughput and HTTP request rate into pods, against the same servers on loopback.

    .venv/bin/python bench/network.py [--runs N] [--mib 64] [--requests 2000] [--concurrency 8] [--json FILE]

hyperd runs in a network namespace the bench makes for itself (``hyper-bench-PID``, only
its loopback up), so its bridge, taps and rules never touch the host's namespace, and
every client and every host-side server runs in that namespace too: all traffic goes to
its 127.0.0.1.  Measured in the same run:

- TCP host -> pod: a client sends ``--mib`` MiB to a published port, half-closes and
  waits for the sink's "ok" (it has read everything); through the bridge network
  (``-p 9000:9000``: hyperd's userland proxy, since loopback traffic never meets the
  kernel's DNAT) and through ``--network user -p 9001:9000`` (QEMU's slirp hostfwd);
  against the same busybox sink run directly in the namespace;
- HTTP: ``--requests`` GETs, ``--concurrency`` at a time, one connection each (busybox
  httpd closes after every answer), to ``busybox httpd`` in a pod (``-p 8080:80``)
  against the same httpd run directly in the namespace.

Leaves nothing behind: containers removed, host-side servers killed by pid, hyperd
stopped, namespace and scratch directory deleted, even on Ctrl-C or failure.  Reports
figures only; no threshold makes it fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import host
import measure
from daemon import Hyperd
from measure import BenchError, Sample, Series, Stats, repeat, timed
from scratch import Scratch

SINK = "cat > /dev/null; echo ok"
"""What the busybox sink runs per connection (``nc -ll -e``): read to the end, then say so."""
ACK = b"ok\n"
PAGE = "hello from busybox httpd\n"
CHUNK = 1 << 20
TIMES = "\N{MULTIPLICATION SIGN}"

BRIDGE_PORT, USER_PORT, BASE_PORT = 9000, 9001, 9002
"""Published TCP sink ports in the namespace: bridge pod, user-network pod, the host sink."""
POD_HTTP_PORT, BASE_HTTP_PORT = 8080, 8081
CONTAINER_PORT = 9000

READY_TIMEOUT = 90.0
"""Seconds for a server (a pod booting under TCG: ~2.5 s) to answer before its first measured run."""
IO_TIMEOUT = 60.0
"""Seconds any one socket operation of a client may block."""
CLIENT_TIMEOUT = 600.0
"""Seconds one client run may take in all."""
STOP_TIMEOUT = 10.0


# -- the clients, run inside the namespace as ``network.py client ...`` --------------------------


def _sink_exchange(port: int, payload: memoryview, total: int) -> float:
    """Connect, send ``total`` bytes, half-close, read the sink's answer: seconds from connect to its EOF."""
    begun = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sent = 0
        while sent < total:
            piece = payload[:min(CHUNK, total - sent)]
            sock.sendall(piece)
            sent += len(piece)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while len(answer) <= len(ACK) and (data := sock.recv(64)):
            answer += data
    elapsed = time.perf_counter() - begun
    if answer != ACK:
        raise ConnectionError(f"the sink answered {answer!r}, not {ACK!r}: it did not read everything")
    return elapsed


def _until_ready(probe: Callable[[], object], timeout: float) -> None:
    """Call ``probe`` until it stops raising OSError, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def client_tcp(port: int, total: int, ready: float) -> dict[str, float]:
    payload = memoryview(os.urandom(CHUNK))
    _until_ready(lambda: _sink_exchange(port, payload, 0), ready)
    return {"seconds": _sink_exchange(port, payload, total), "bytes": total}


async def _get(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    status, _, rest = response.partition(b"\r\n")
    if not status.startswith(b"HTTP/1.") or status.split()[1:2] != [b"200"] or not rest.endswith(PAGE.encode()):
        raise ConnectionError(f"unexpected answer: {response[:120]!r}")


async def _load(port: int, requests: int, concurrency: int) -> float:
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await asyncio.wait_for(_get(port), IO_TIMEOUT)

    begun = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - begun


def client_http(port: int, requests: int, concurrency: int, ready: float) -> dict[str, float]:
    _until_ready(lambda: asyncio.run(asyncio.wait_for(_get(port), IO_TIMEOUT)), ready)
    return {"seconds": asyncio.run(_load(port, requests, concurrency)), "requests": requests}


def client_main(argv: list[str]) -> int:
    """One client run; prints its figures as JSON, or fails (a failed run must not be timed as fast)."""
    parser = argparse.ArgumentParser(prog="bench/network.py client")
    parser.add_argument("kind", choices=("tcp", "http"))
    parser.add_argument("port", type=int)
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--ready", type=float, default=0.0, help="seconds to wait for the server first")
    args = parser.parse_args(argv)
    try:
        if args.kind == "tcp":
            result = client_tcp(args.port, args.bytes, args.ready)
        else:
            result = client_http(args.port, args.requests, args.concurrency, args.ready)
    except (OSError, TimeoutError) as err:
        print(f"client {args.kind} 127.0.0.1:{args.port}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


# -- the bench ----------------------------------------------------------------------------------


class Namespace:
    """A network namespace of the bench's own, loopback up; deleted at the end (safe twice)."""

    def __init__(self) -> None:
        self.name = f"hyper-bench-{os.getpid()}"
        self.made = False

    def create(self) -> None:
        if Path("/run/netns", self.name).exists():
            raise BenchError(f"network namespace {self.name} already exists: not ours, left alone")
        timed(["ip", "netns", "add", self.name])
        self.made = True
        timed(self.argv("ip", "link", "set", "lo", "up"))

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        if not self.made:
            return
        left = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True,
                              timeout=30, check=False).stdout.split()
        if left:
            print(f"[bench] processes still in {self.name} (pids {', '.join(left)}): the namespace goes "
                  "once they exit", file=sys.stderr)
        timed(["ip", "netns", "del", self.name])
        self.made = False


class Server:
    """A server the bench starts directly in the namespace (the baselines), stopped by its pid."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # ``ip netns exec`` execs the server in place: this pid is the server's.
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Figures:
    tcp_base: Series
    tcp_bridge: Series
    tcp_user: Series
    http_base: Series
    http_pod: Series

    def all(self) -> list[Series]:
        return [self.tcp_base, self.tcp_bridge, self.tcp_user, self.http_base, self.http_pod]


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Scratch) -> None:
        self.args = args
        self.scratch = scratch
        self.netns = Namespace()
        self.daemon = Hyperd(scratch / "hyperd", netns=self.netns.name)
        self.servers: list[Server] = []
        self.containers: list[str] = []
        self.machine: dict[str, str] = {}
        self.notes: list[str] = []

    def _client(self, *args: str) -> dict[str, float]:
        argv = self.netns.argv(sys.executable, str(Path(__file__).resolve()), "client", *args,
                               "--ready", str(READY_TIMEOUT))
        _, output = timed(argv, timeout=CLIENT_TIMEOUT + READY_TIMEOUT)
        found = json.loads(output.strip().splitlines()[-1])
        if not isinstance(found, dict):
            raise BenchError(f"the client printed {output[:200]!r}")
        return {key: float(value) for key, value in found.items()}

    def tcp(self, port: int) -> Callable[[], Sample]:
        def once() -> Sample:
            result = self._client("tcp", str(port), "--bytes", str(self.args.mib << 20))
            return {"mb_s": result["bytes"] / result["seconds"] / 1e6, "seconds": result["seconds"]}
        return once

    def http(self, port: int) -> Callable[[], Sample]:
        def once() -> Sample:
            result = self._client("http", str(port), "--requests", str(self.args.requests),
                                  "--concurrency", str(self.args.concurrency))
            return {"req_s": result["requests"] / result["seconds"], "seconds": result["seconds"]}
        return once

    def _serve(self, name: str, argv: list[str]) -> None:
        server = Server(self.netns.argv(*argv), self.scratch / f"{name}.log")
        self.servers.append(server)
        server.start()

    def _pod(self, name: str, *flags: str) -> None:
        self.containers.append(name)
        timed(self.daemon.hyper("run", "-d", "--name", name, *flags), timeout=120)

    def measure(self) -> Figures:
        runs = self.args.runs
        self.machine = host.facts()
        self.machine["load_average"] = host.load_average()
        others = set(host.other_vms(self.scratch.path))
        self.netns.create()
        self.daemon.start()
        info = self.daemon.info()
        self.machine.update(accelerator=info.get("Accelerator", "?"), qemu_version=info.get("HypervisorVersion", "?"))

        www = self.scratch / "www"
        www.mkdir()
        (www / "index.html").write_text(PAGE)
        sink = ["nc", "-ll", "-p", str(CONTAINER_PORT), "-e", "sh", "-c", SINK]
        pid = os.getpid()
        # All three pods boot now, one after another; the clients wait for each to answer.
        self._pod(f"bench-sink-{pid}", "-p", f"{BRIDGE_PORT}:{CONTAINER_PORT}", "busybox", *sink)
        self._pod(f"bench-sink-user-{pid}", "--network", "user", "-p", f"{USER_PORT}:{CONTAINER_PORT}",
                  "busybox", *sink)
        self._pod(f"bench-httpd-{pid}", "-p", f"{POD_HTTP_PORT}:80", "busybox", "sh", "-c",
                  f"mkdir -p /www && echo '{PAGE.strip()}' > /www/index.html && exec httpd -f -p 80 -h /www")
        self._serve("sink", ["busybox", "nc", "-ll", "-p", str(BASE_PORT), "-e", "sh", "-c", SINK])
        self._serve("httpd", ["busybox", "httpd", "-f", "-p", f"127.0.0.1:{BASE_HTTP_PORT}", "-h", str(www)])

        mib = self.args.mib
        figures = Figures(
            tcp_base=repeat(f"TCP {mib} MiB, busybox sink on loopback", runs, self.tcp(BASE_PORT), warmup=1),
            tcp_bridge=repeat(f"TCP {mib} MiB -> pod, bridge", runs, self.tcp(BRIDGE_PORT), warmup=1),
            tcp_user=repeat(f"TCP {mib} MiB -> pod, --network user", runs, self.tcp(USER_PORT), warmup=1),
            http_base=repeat("HTTP, busybox httpd on loopback", runs, self.http(BASE_HTTP_PORT), warmup=1),
            http_pod=repeat("HTTP -> pod, bridge", runs, self.http(POD_HTTP_PORT), warmup=1),
        )
        self.machine["load_average_end"] = host.load_average()
        others |= set(host.other_vms(self.scratch.path))
        if others:
            self.notes.append(f"note: {len(others)} QEMU process(es) not the bench's own ran on this host meanwhile "
                              f"(pids {', '.join(map(str, sorted(others)))}): they share the cores, figures may be "
                              "noisy")
        return figures

    def _remove_containers(self) -> None:
        if self.containers and self.daemon.process is not None:
            subprocess.run(self.daemon.hyper("rm", "-f", *self.containers), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120, check=False)
        self.containers = []

    def _stop_servers(self) -> None:
        for server in self.servers:
            server.stop()

    def cleanup(self) -> None:
        """Each step on its own, so that one failing does not keep the others from running."""
        for step in (self._remove_containers, self._stop_servers, self.daemon.stop, self.netns.delete,
                     self.scratch.remove):
            try:
                step()
            except Exception as err:  # report and go on: the rest must still be cleaned
                print(f"[bench] cleanup: {step.__qualname__} failed: {err}", file=sys.stderr)


def _row(label: str, stats: Stats, unit: str, digits: int) -> str:
    return f"| {label} | **{stats.median:.{digits}f} {unit}** | {stats.low:.{digits}f} | {stats.high:.{digits}f} |"


def _ratio(label: str, pod: Stats, base: Stats) -> str:
    return f"| ratio {label} | **{pod.median / base.median:.3f}{TIMES}** | | |"


def render(figures: Figures, args: argparse.Namespace, machine: dict[str, str], notes: list[str]) -> str:
    """A Markdown table for docs/performance.md; ratios are of medians, pod over baseline."""
    mib, n = args.mib, args.runs
    tcp = {name: s.stats("mb_s") for name, s in
           (("base", figures.tcp_base), ("bridge", figures.tcp_bridge), ("user", figures.tcp_user))}
    http = {name: s.stats("req_s") for name, s in (("base", figures.http_base), ("pod", figures.http_pod))}
    return "\n".join([
        f"Network: {n} runs per figure after one unmeasured warm-up, median / min / max; "
        f"{machine['cpu']} (nproc {machine['nproc']}), {machine['accelerator']}, QEMU {machine['qemu_version']}; "
        f"load average {machine['load_average']} at start, {machine['load_average_end']} at end",
        "",
        "| | median | min | max |",
        "|---|---|---|---|",
        _row(f"TCP host → pod, {mib} MiB, bridge, published port (`-p {BRIDGE_PORT}:{CONTAINER_PORT}`, "
             "hyperd's userland proxy)", tcp["bridge"], "MB/s", 1),
        _row(f"TCP host → pod, {mib} MiB, `--network user -p {USER_PORT}:{CONTAINER_PORT}` (slirp hostfwd)",
             tcp["user"], "MB/s", 1),
        _row(f"TCP baseline: {mib} MiB to the same busybox sink on the namespace's loopback", tcp["base"], "MB/s", 1),
        _ratio("bridge / baseline", tcp["bridge"], tcp["base"]),
        _ratio("user / baseline", tcp["user"], tcp["base"]),
        _row(f"HTTP GET, `busybox httpd` in a pod, `-p {POD_HTTP_PORT}:80` (bridge), {args.requests} requests, "
             f"{args.concurrency} at a time", http["pod"], "req/s", 0),
        _row("HTTP GET baseline: the same busybox httpd on the namespace's loopback", http["base"], "req/s", 0),
        _ratio("pod / baseline", http["pod"], http["base"]),
        "",
        f"MB = 10^6 bytes. The TCP sink is `busybox nc -ll -p PORT -e sh -c '{SINK}'` everywhere; a run is "
        "timed from connect until the sink's answer after the client's half-close. Every client and "
        "host-side server runs in the bench's own network namespace, on 127.0.0.1.",
        *notes,
    ])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/network.py", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--mib", type=int, default=64, help="MiB sent per TCP run (default 64)")
    parser.add_argument("--requests", type=int, default=2000, help="HTTP requests per run (default 2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP requests in flight (default 8)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every sample to FILE")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100 or not 1 <= args.mib <= 4096 or not 1 <= args.requests <= 100_000 \
            or not 1 <= args.concurrency <= 64:
        parser.error("bounds: --runs 1-100, --mib 1-4096, --requests 1-100000, --concurrency 1-64")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    args = parse(argv)

    def report(bench: Bench, figures: Figures) -> None:
        print(render(figures, args, bench.machine, bench.notes))
        if args.json:
            args.json.write_text(json.dumps({s.name: s.to_json() for s in figures.all()}, indent=2) + "\n")
            print(f"\nraw numbers: {args.json}")

    return measure.main(lambda: Bench(args, Scratch()), Bench.measure, report)


if __name__ == "__main__":
    sys.exit(main())
