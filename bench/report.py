"""The bench's results, as the table people read and as the JSON machines read."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from measure import Series, Stats

TARGET_SECONDS = 3.0
PHASES = (
    ("vm_spawned", "QEMU spawned"),
    ("init_started", "/init running (kernel booted, Python up)"),
    ("agent_ready", "agent ready"),
    ("container_started", "container started"),
    ("exited", "container exited"),
    ("vm_gone", "VM gone"),
)
LABEL_WIDTH = 52


@dataclass
class Results:
    runs: int
    machine: dict[str, str]
    cli: Series
    hyper_rm: Series
    hyper_phased: Series
    floor: Series
    floor_argv: list[str]
    idle: Series
    settle: float
    window: float
    peer: Series | None = None
    peer_note: str = ""
    peer_command: str = ""
    peer_passed_over: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def gap(self) -> float:
        return self.hyper_rm.median() - self.floor.median()

    @property
    def ratio(self) -> float | None:
        return self.hyper_rm.median() / self.peer.median() if self.peer is not None else None

    def to_json(self) -> dict[str, Any]:
        series = [self.cli, self.hyper_rm, self.hyper_phased, self.floor, self.idle]
        if self.peer is not None:
            series.append(self.peer)
        return {
            "runs": self.runs,
            "machine": self.machine,
            "floor_argv": self.floor_argv,
            "idle_settle_seconds": self.settle,
            "idle_window_seconds": self.window,
            "series": {s.name: s.to_json() for s in series},
            "gap_seconds": self.gap,
            "ratio_to_podman": self.ratio,
            "peer_note": self.peer_note,
            "peer_command": self.peer_command,
            "peer_passed_over": self.peer_passed_over,
            "target": {"seconds": TARGET_SECONDS, "met": self.hyper_rm.median() <= TARGET_SECONDS},
        }


def _row(label: str, stats: Stats, unit: str = "s", digits: int = 3) -> str:
    cells = "".join(f"{value:>9.{digits}f}" for value in (stats.median, stats.low, stats.high))
    return f"  {label:<{LABEL_WIDTH}}{cells} {unit}"


def _phase_steps(series: Series) -> dict[str, float]:
    """Per phase, the median of (this phase - the previous one) over the runs."""
    steps: dict[str, list[float]] = {key: [] for key, _ in PHASES}
    for sample in series.samples:
        previous = 0.0
        for key, _ in PHASES:
            steps[key].append(sample[key] - previous)
            previous = sample[key]
    return {key: statistics.median(values) for key, values in steps.items()}


def render(results: Results) -> str:
    m = results.machine
    n = results.runs
    out = [
        f"hyper bench: {n} runs per boot figure, median / min / max; one unmeasured warm-up run before each",
        "",
        f"  CPU            {m['cpu']} (nproc {m['nproc']})",
        f"  host kernel    {m['host_kernel']}; load average {m['load_average']} at start, "
        f"{m.get('load_average_end', '?')} at end",
        f"  accelerator    {m['accelerator']} ({m['accelerator_reason']})",
        f"  QEMU           {m['qemu_version']} ({m['qemu_binary']})",
        f"  guest kernel   {m['guest_kernel']}",
        f"  guest disk     {m['guest_disk']}",
        "  floor          hyperd's machine, accelerator, CPU, memory and kernel command line, init=/probe;",
        "                 no agent channel, monitor or image disk",
        f"  podman         {m.get('podman', 'skipped: ' + results.peer_note)}",
        *(f"                 passed over: {reason}" for reason in results.peer_passed_over if results.peer),
        "",
        f"  {'Wall time, exec to exit':<{LABEL_WIDTH}}{'median':>9}{'min':>9}{'max':>9}",
        _row("hyper run --rm busybox true", results.hyper_rm.stats()),
        _row("hyper run busybox true (no --rm; phases below)", results.hyper_phased.stats()),
        _row("plain QEMU boot to /probe, spawn to exit (floor)", results.floor.stats()),
    ]
    if results.peer is not None:
        out.append(_row("podman run (the command below)", results.peer.stats()))
    else:
        out.append(f"  {'podman run --rm --network none busybox true':<{LABEL_WIDTH}}{'skipped':>9}")
    out.append(_row("hyper version (CLI start-up and one request)", results.cli.stats()))
    out += [
        "",
        f"  gap    hyper run --rm - floor (medians)      {results.gap:7.3f} s",
    ]
    if results.ratio is not None:
        out.append(f"  ratio  hyper run --rm / podman (medians)   {results.ratio:7.1f} x")
        out.append(f"  podman command: {results.peer_command}")
    out += _render_phases(results)
    out += _render_idle(results)
    median = results.hyper_rm.median()
    verdict = "MET" if median <= TARGET_SECONDS else "NOT MET"
    out += [
        "",
        "Target (informational: the bench never fails on it)",
        f"  hyper run --rm busybox true median <= {TARGET_SECONDS:.1f} s: {median:.3f} s, {verdict}",
    ]
    if results.notes:
        out += ["", *results.notes]
    return "\n".join(out)


def _render_phases(results: Results) -> list[str]:
    series = results.hyper_phased
    steps = _phase_steps(series)
    out = [
        "",
        f"Phases of `hyper run busybox true`: the {len(series.samples)} runs without --rm above, each then",
        "`hyper inspect` (State.Timings) and `hyper rm`; medians, seconds from hyperd's start request",
        "",
        f"  {'phase':<{LABEL_WIDTH}}{'at':>9}{'step':>9}",
    ]
    for key, label in PHASES:
        out.append(f"  {label:<{LABEL_WIDTH}}{series.median(key):>9.3f}{steps[key]:>9.3f}")
    outside = Stats.of([s["wall"] - s["vm_gone"] for s in series.samples])
    out += [
        f"  {'outside the start request (wall - VM gone):':<{LABEL_WIDTH}}{outside.median:>9.3f}",
        "    CLI start-up, create, attach, wait and exit",
        "  /init running = agent ready - the agent's start-up as the guest measures it",
    ]
    return out


def _render_idle(results: Results) -> list[str]:
    idle = results.idle
    return [
        "",
        f"Idle pod: `hyper run -d busybox sleep 3600`, {len(idle.samples)} pods one after another, each",
        f"measured {results.settle:g} s after start (memory), then CPU over {results.window:g} s; then a burst",
        f"(`hyper exec` of a shell that takes 100 MB and frees it), memory again {results.settle:g} s after it; then",
        "`hyper rm -f`",
        "",
        f"  {'QEMU process (State.Pid)':<{LABEL_WIDTH}}{'median':>9}{'min':>9}{'max':>9}",
        _row("RSS", idle.stats("rss_mib"), "MiB", 1),
        _row("PSS", idle.stats("pss_mib"), "MiB", 1),
        _row("  of RSS: guest RAM touched (-m mapping)", idle.stats("guest_ram_rss_mib"), "MiB", 1),
        _row("  of RSS: TCG translated-code cache", idle.stats("tcg_code_rss_mib"), "MiB", 1),
        _row("CPU at rest", idle.stats("cpu_percent"), "% of one core", 2),
        _row("RSS right after a 100 MB burst in the container", idle.stats("burst_rss_mib"), "MiB", 1),
        _row("RSS once it rested again (free page reporting)", idle.stats("after_burst_rss_mib"), "MiB", 1),
        _row("  of RSS: guest RAM touched", idle.stats("after_burst_guest_ram_rss_mib"), "MiB", 1),
    ]
