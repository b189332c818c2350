"""``hyper top`` and ``hyper stats``: a running container's processes and usage."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import click

from cli.common import connect, say
from cli.errors import HyperError

STATS_HEADER = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS",
                "VM MEM (HOST)")


def _amount(count: float, binary: bool) -> str:
    """As docker's stats shows them: memory in powers of 1024 (1.5MiB), transfers of 1000 (1.2MB)."""
    step, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "kB", "MB", "GB", "TB"))
    for unit in units[:-1]:
        if count < step:
            return f"{count:.4g}{unit}" if unit != "B" else f"{int(count)}B"
        count /= step
    return f"{count:.4g}{units[-1]}"


def _binary(count: float) -> str:
    return _amount(count, binary=True)


def _decimal(count: float) -> str:
    return _amount(count, binary=False)


def row(sample: dict[str, Any]) -> tuple[str, ...]:
    """One ``docker stats`` line from one sample (CPU % from it and its ``precpu``)."""
    cpu, pre = sample["cpu_stats"], sample["precpu_stats"]
    system = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    used = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    percent = used / system * cpu["online_cpus"] * 100 if system > 0 else 0.0
    memory = sample["memory_stats"]
    rx = sum(n["rx_bytes"] for n in sample["networks"].values())
    tx = sum(n["tx_bytes"] for n in sample["networks"].values())
    block = {entry["op"]: entry["value"] for entry in sample["blkio_stats"]["io_service_bytes_recursive"]}
    vm = sample["vm"]
    return (sample["id"][:12], sample["name"].lstrip("/"), f"{percent:.2f}%",
            f"{_binary(memory['usage'])} / {_binary(memory['limit'])}",
            f"{memory['usage'] / memory['limit'] * 100 if memory['limit'] else 0:.2f}%",
            f"{_decimal(rx)} / {_decimal(tx)}", f"{_decimal(block.get('read', 0))} / {_decimal(block.get('write', 0))}",
            str(sample["pids_stats"]["current"]), f"{_binary(vm['memory'])} / {_binary(vm['memory_limit'])}")


@click.command()
@click.argument("container")
@click.pass_obj
def top(host: str, container: str) -> None:
    """Show the processes of a running container."""
    from cli import output

    answer = connect(host).top(container)
    click.echo(output.table([answer["Titles"], *answer["Processes"]]))


@click.command()
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.argument("containers", nargs=-1)
@click.pass_obj
def stats(host: str, no_stream: bool, containers: tuple[str, ...]) -> None:
    """Show the usage of running containers (all of them by default), every second."""
    from cli import output

    client = connect(host)
    names = list(containers) or [c["Id"] for c in client.containers()]
    latest: dict[str, tuple[str, ...]] = {}
    failures: list[HyperError] = []

    def follow(name: str) -> None:
        try:
            with client.stats(name, stream=not no_stream) as stream:
                for line in stream.lines():
                    latest[name] = row(json.loads(line))
        except HyperError as err:
            failures.append(err)
        except (ValueError, KeyError, TypeError) as err:
            failures.append(HyperError(f"hyperd sent malformed stats: {err}"))

    if no_stream:
        threads = [threading.Thread(target=follow, args=(name,), daemon=True) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        click.echo(output.table([STATS_HEADER, *(latest[n] for n in names if n in latest)]))
        for failure in failures:
            say(failure.message)
        if failures:
            sys.exit(failures[-1].exit_code)
        return
    for name in names:
        threading.Thread(target=follow, args=(name,), daemon=True).start()
    while True:
        time.sleep(1)
        click.echo("\x1b[2J\x1b[H" + output.table([STATS_HEADER, *(latest[n] for n in names if n in latest)]))
