"""Pod commands: ``hyper pod create|start|stop|rm|inspect|ls``: several containers in one VM,
from a spec file in YAML or JSON (``docs/pod-spec.md``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from cli.common import connect, each, inspect_each, then_echo
from cli.errors import HyperError

if TYPE_CHECKING:
    from cli.client import Client


def read_spec(path: str) -> Any:
    """The spec in ``path`` (``-``: stdin), YAML or JSON (JSON is YAML); hyperd checks what it says."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as err:
        raise HyperError(f"cannot read pod spec {path}: {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise HyperError(f"pod spec {path} is not YAML or JSON{at}: {getattr(err, 'problem', None) or err}") from None


@click.group("pod")
def pod() -> None:
    """Manage pods: several containers in one VM."""


@pod.command("create")
@click.option("-f", "--file", "path", required=True, metavar="FILE", help="The pod spec, YAML or JSON ('-': stdin).")
@click.option("--start", is_flag=True, help="Start the pod once it is created.")
@click.pass_obj
def create(host: str, path: str, start: bool) -> None:
    """Create a pod and its containers from a spec; print its ID."""
    client = connect(host)
    spec = read_spec(path)
    for reference in dict.fromkeys(str(c["image"]) for c in _containers(spec)):
        _pull_missing(client, reference)
    created = client.create_pod(spec)
    if start:
        client.start_pod(created["Id"])
    click.echo(created["Id"])


def _pull_missing(client: Client, reference: str) -> None:
    """Pull an image the daemon does not have, as ``run`` does (progress on stderr)."""
    from cli import images
    from cli.errors import APIError

    try:
        client.image(reference)
    except APIError as err:
        if err.status != 404:
            raise
        click.echo(f"Unable to find image '{images.with_default_tag(reference)}' locally", err=True)
        images.pull_image(client, reference, "", sys.stderr)


def _containers(spec: Any) -> list[dict[str, Any]]:
    """The spec's containers as far as they can be read (hyperd says what is wrong with the rest)."""
    containers = spec.get("containers") if isinstance(spec, dict) else None
    return [c for c in containers if isinstance(c, dict) and c.get("image")] if isinstance(containers, list) else []


@pod.command("start")
@click.argument("pods", nargs=-1, required=True)
@click.pass_obj
def start(host: str, pods: tuple[str, ...]) -> None:
    """Start pods: one VM each, with all their containers."""
    client = connect(host)
    each(pods, then_echo(client.start_pod))


@pod.command("stop")
@click.option("-t", "--time", "timeout", type=int, default=None, metavar="SECONDS",
              help="Seconds to wait for each container before killing it.")
@click.argument("pods", nargs=-1, required=True)
@click.pass_obj
def stop(host: str, timeout: int | None, pods: tuple[str, ...]) -> None:
    """Stop pods: every container, then the VM."""
    client = connect(host)
    each(pods, then_echo(lambda name: client.stop_pod(name, timeout)))


@pod.command("rm")
@click.option("-f", "--force", is_flag=True, help="Stop a running pod first.")
@click.argument("pods", nargs=-1, required=True)
@click.pass_obj
def rm(host: str, force: bool, pods: tuple[str, ...]) -> None:
    """Remove pods and their containers."""
    client = connect(host)
    each(pods, then_echo(lambda name: client.remove_pod(name, force)))


@pod.command("inspect")
@click.option("-f", "--format", "fmt", metavar="TEMPLATE", help="Go template for each pod.")
@click.argument("pods", nargs=-1, required=True)
@click.pass_obj
def inspect(host: str, fmt: str | None, pods: tuple[str, ...]) -> None:
    """Show pods in detail: their containers, state and spec."""
    inspect_each(pods, connect(host).pod, fmt)


@pod.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print pod IDs.")
@click.option("--format", "fmt", metavar="TEMPLATE", help="Go template, 'table TEMPLATE' or 'json'.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the IDs.")
@click.pass_obj
def ls(host: str, quiet: bool, fmt: str | None, no_trunc: bool) -> None:
    """List pods, newest first."""
    from cli import template

    rows = [{"ID": p["Id"] if no_trunc else p["Id"][:12], "Name": p["Name"], "Status": p["Status"],
             "Containers": str(len(p["Containers"]))} for p in connect(host).pods()]
    if quiet:
        for row in rows:
            click.echo(row["ID"])
        return
    headers = {"ID": "POD ID"}
    for line in template.render(fmt or "table {{.ID}}\t{{.Name}}\t{{.Status}}\t{{.Containers}}", rows, headers):
        click.echo(line)


pod.add_command(ls, "list")
pod.add_command(rm, "remove")
