"""``make bench`` (images): pulling from a loopback registry and running a big image, against skopeo and busybox.

    .venv/bin/python bench/images.py [--runs N] [--size-mib 200] [--json FILE]

Builds a 5-layer image (busybox, then four layers of pseudo-random data summing to
``--size-mib``, so gzip cannot shrink the transfer) and a smaller one of the same shape,
pushes both to Debian's docker-registry on a loopback port and measures, in the same run:

- ``hyper pull`` of the big image into an empty store, against ``skopeo copy`` of it to a
  fresh OCI layout (the baseline: the same bytes fetched and digest-checked);
- a re-pull of an image already present (a manifest check, no blob);
- the first ``hyper run --rm IMAGE true`` after a pull, which builds the image's disk, for
  both sizes, to show how it grows with size;
- ``hyper run --rm IMAGE true`` with the disk cached, against the same with busybox.

Starts its own hyperd and registry under a scratch directory and leaves nothing behind.
Reports figures only; no threshold makes it fail.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test registry and image builders are shared with the tests

import measure  # noqa: E402
from daemon import Hyperd  # noqa: E402
from measure import BenchError, Sample, Series, Stats, repeat, timed  # noqa: E402
from scratch import Scratch  # noqa: E402

from tests.integration import images, registries  # noqa: E402

LAYERS = 4
"""Data layers on top of busybox: 5 layers in all."""
SMALL_FRACTION = 4
"""The small image is this many times smaller than the big one."""
PULL_TIMEOUT = 900.0


def data_image(scratch: Path, seed: str, total: int) -> images.ImageSpec:
    """busybox and ``LAYERS`` layers of ``total`` pseudo-random bytes; gzip level 1, as data this random would get."""
    rng = random.Random(seed)
    size = total // LAYERS
    data = [images.Layer((images.file(f"data/{index}.bin", rng.randbytes(size)),), level=1)
            for index in range(LAYERS)]
    return images.ImageSpec((images.busybox_layer(scratch), *data), cmd=("sh",), env=("PATH=/bin:/sbin",))


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Scratch) -> None:
        self.args = args
        self.scratch = scratch
        self.daemon = Hyperd(scratch / "hyperd")
        self.registry: registries.RegistryServer | None = None
        self.big = self.small = ""
        self._copies = 0

    def skopeo_copy(self) -> Sample:
        self._copies += 1
        target = self.scratch / f"skopeo-{self._copies}"
        wall, _ = timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{self.big}",
                         f"oci:{target}:big"], timeout=PULL_TIMEOUT)
        shutil.rmtree(target, ignore_errors=True)
        return {"wall": wall}

    # Each of these starts and ends with the image absent from the store (its blobs and disk removed),
    # except the re-pull, which needs it present.

    def _pull(self, ref: str) -> float:
        wall, _ = timed(self.daemon.hyper("pull", "-q", ref), timeout=PULL_TIMEOUT)
        return wall

    def _remove(self, ref: str) -> None:
        timed(self.daemon.hyper("rmi", ref))

    def pull(self) -> Sample:
        wall = self._pull(self.big)
        self._remove(self.big)
        return {"wall": wall}

    def repull(self) -> Sample:
        return {"wall": self._pull(self.big)}

    def first_run(self, ref: str) -> Callable[[], Sample]:
        def once() -> Sample:
            self._pull(ref)
            wall, _ = timed(self.daemon.hyper("run", "--rm", ref, "true"), timeout=PULL_TIMEOUT)
            self._remove(ref)
            return {"wall": wall}
        return once

    def run(self, ref: str) -> Callable[[], Sample]:
        def once() -> Sample:
            wall, _ = timed(self.daemon.hyper("run", "--rm", ref, "true"))
            return {"wall": wall}
        return once

    def measure(self) -> dict[str, Series]:
        runs = self.args.runs
        total = self.args.size_mib << 20
        layout = self.scratch / "layout"
        print(f"[bench] building a {self.args.size_mib} MiB and a {self.args.size_mib // SMALL_FRACTION} MiB "
              "image", file=sys.stderr)
        images.write_layout(layout, {"big": data_image(self.scratch.path, "big", total),
                                     "small": data_image(self.scratch.path, "small", total // SMALL_FRACTION)})
        registry = self.registry
        assert registry is not None
        for tag in ("big", "small"):
            registry.push(layout, tag, f"bench/{tag}:1")
        self.big, self.small = f"{registry.address}/bench/big:1", f"{registry.address}/bench/small:1"
        self.daemon.start()
        series = self.interleaved("skopeo copy docker:// -> oci: / hyper pull into an empty store (big)",
                                  ("skopeo", self.skopeo_copy), ("pull", self.pull))
        series["repull"] = repeat("hyper pull (big, already present)", runs, self.repull, warmup=1)
        self._remove(self.big)
        series["first_small"] = repeat("first hyper run --rm after its pull (small)", runs,
                                       self.first_run(self.small))
        series["first_big"] = repeat("first hyper run --rm after its pull (big)", runs, self.first_run(self.big))
        self._pull(self.big)
        series |= self.interleaved("hyper run --rm true, busybox / big (disk cached)",
                                   ("run_busybox", self.run("busybox")), ("run_big", self.run(self.big)))
        return series

    def interleaved(self, title: str, *measures: tuple[str, Callable[[], Sample]]) -> dict[str, Series]:
        """Each measure once per round, alternating, after one unrecorded round: drift on the host
        (page cache, other load) then hits every one alike."""
        samples: dict[str, list[dict[str, float]]] = {name: [] for name, _ in measures}
        print(f"[bench] {title}: ", end="", file=sys.stderr, flush=True)
        for round_ in range(self.args.runs + 1):
            walls = []
            for name, once in measures:
                sample = dict(once())
                walls.append(f"{sample['wall']:.2f}")
                if round_:
                    samples[name].append(sample)
            print("/".join(walls) + ("" if round_ else "(w)"), end=" ", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return {name: Series(f"{title}: {name}", samples[name], 1) for name, _ in measures}

    def cleanup(self) -> None:
        for step in (self.daemon.stop, self.scratch.remove):
            try:
                step()
            except Exception as err:  # report and go on: the rest must still be cleaned
                print(f"[bench] cleanup: {step.__qualname__} failed: {err}", file=sys.stderr)


def _row(label: str, stats: Stats) -> str:
    return f"  {label:<48} {stats.median:8.3f} s  (min {stats.low:.3f}, max {stats.high:.3f}, n={stats.n})"


def render(series: dict[str, Series], size_mib: int) -> str:
    stats = {name: s.stats() for name, s in series.items()}
    small = size_mib // SMALL_FRACTION
    lines = [
        f"Images: a {size_mib} MiB, 5-layer image from docker-registry on loopback (median, min, max)",
        _row("skopeo copy to an OCI layout (baseline)", stats["skopeo"]),
        _row("hyper pull, empty store", stats["pull"]),
        f"  {'ratio hyper pull / skopeo copy (target <= 1.2)':<48} "
        f"{stats['pull'].median / stats['skopeo'].median:8.2f} x",
        _row("hyper pull, image present (target <= 0.3 s)", stats["repull"]),
        "",
        "First hyper run --rm IMAGE true after its pull (disk build + run):",
        _row(f"{small} MiB image", stats["first_small"]),
        _row(f"{size_mib} MiB image", stats["first_big"]),
        "",
        "hyper run --rm IMAGE true with the image's disk cached:",
        _row("busybox", stats["run_busybox"]),
        _row(f"{size_mib} MiB image", stats["run_big"]),
        f"  {'ratio big / busybox (target <= 1.10)':<48} "
        f"{stats['run_big'].median / stats['run_busybox'].median:8.2f} x",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/images.py", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--size-mib", type=int, default=200, help="size of the big image's data (default 200)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every sample to FILE")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mib < SMALL_FRACTION * LAYERS:
        parser.error(f"--runs must be at least 1 and --size-mib at least {SMALL_FRACTION * LAYERS}")
    if (missing := registries.missing_tools()) is not None:
        print(f"bench: {missing}", file=sys.stderr)
        return 1

    def run(bench: Bench) -> dict[str, Series]:
        with registries.start_registry(bench.scratch / "registry") as registry:
            bench.registry = registry
            try:
                return bench.measure()
            finally:
                bench.daemon.stop()  # before its registry goes

    def report(_bench: Bench, series: dict[str, Series]) -> None:
        print(render(series, args.size_mib))
        if args.json:
            args.json.write_text(json.dumps({name: s.to_json() for name, s in series.items()}, indent=2) + "\n")

    return measure.main(lambda: Bench(args, Scratch()), run, report, errors=(BenchError, registries.RegistryError))


if __name__ == "__main__":
    sys.exit(main())
