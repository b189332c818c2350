"""Volume commands: ``hyper volume create|ls|inspect|rm|prune``, and the ``run``/``create``
flags ``-v`` and ``--mount`` as docker's Binds, Mounts and Tmpfs."""

from __future__ import annotations

import csv
import os
from typing import Any

import click

from cli import output
from cli.common import connect, each, inspect_each, then_echo
from cli.errors import HyperError

TRUE = {"", "1", "true"}
FALSE = {"0", "false"}


def bind(text: str) -> str:
    """A ``-v`` flag with a relative host path made absolute, as docker's client does (``./data:/data``)."""
    source, colon, rest = text.partition(":")
    if colon and rest and (source in (".", "..") or source.startswith(("./", "../"))):
        return f"{os.path.abspath(source)}:{rest}"
    return text


def mount(text: str) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """A ``--mount`` flag as a docker Mounts entry, or (type=tmpfs) a Tmpfs (path, options) pair."""
    fields: dict[str, str] = {}
    for item in next(csv.reader([text])):
        key, _, value = item.partition("=")
        fields[key.strip().lower()] = value
    kind = fields.pop("type", "volume")
    source = next((fields.pop(k) for k in ("source", "src") if k in fields), "")
    target = next((fields.pop(k) for k in ("target", "destination", "dst") if k in fields), "")
    if not target:
        raise HyperError(f"invalid argument {text!r} for --mount: target is required")
    readonly = False
    for key in ("readonly", "ro"):
        if key in fields:
            value = fields.pop(key).lower()
            if value not in TRUE | FALSE:
                raise HyperError(f"invalid value {value!r} for {key} in --mount {text!r}")
            readonly = value in TRUE
    if kind == "tmpfs":
        options = [f"size={fields.pop('tmpfs-size')}"] if "tmpfs-size" in fields else []
        options += [f"mode={fields.pop('tmpfs-mode')}"] if "tmpfs-mode" in fields else []
        options += ["ro"] if readonly else []
        _refuse(fields, text)
        return None, (target, ",".join(options))
    entry: dict[str, Any] = {"Type": kind, "Source": source, "Target": target, "ReadOnly": readonly}
    if "volume-nocopy" in fields:
        entry["VolumeOptions"] = {"NoCopy": fields.pop("volume-nocopy").lower() in TRUE}
    fields.pop("bind-propagation", None)  # the VM's mounts are private whatever is asked: nothing to share with
    _refuse(fields, text)
    return entry, None


def _refuse(fields: dict[str, str], text: str) -> None:
    if fields:
        raise HyperError(f"unexpected key {sorted(fields)[0]!r} in --mount {text!r}")


@click.group("volume")
def volume() -> None:
    """Manage volumes."""


@volume.command("create")
@click.option("-d", "--driver", default="local", show_default=True, help="Only local volumes exist.")
@click.option("-o", "--opt", "options", multiple=True, metavar="K=V", help="size=SIZE of the volume's disk.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Set metadata (repeatable).")
@click.argument("name", required=False, default="")
@click.pass_obj
def create(host: str, driver: str, options: tuple[str, ...], labels: tuple[str, ...], name: str) -> None:
    """Create a volume (an ext4 disk, made on its first use); print its name."""
    config = {"Name": name, "Driver": driver, "DriverOpts": dict(o.partition("=")[::2] for o in options),
              "Labels": dict(label.partition("=")[::2] for label in labels)}
    click.echo(connect(host).create_volume(config)["Name"])


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print volume names.")
@click.option("--format", "fmt", metavar="TEMPLATE", help="Go template, 'table TEMPLATE' or 'json'.")
@click.pass_obj
def ls(host: str, quiet: bool, fmt: str | None) -> None:
    """List volumes."""
    from cli import template

    rows = [{"Driver": v["Driver"], "Name": v["Name"], "Mountpoint": v["Mountpoint"], "Scope": v["Scope"]}
            for v in connect(host).volumes().get("Volumes") or ()]
    if quiet:
        for row in rows:
            click.echo(row["Name"])
        return
    headers = {"Name": "VOLUME NAME"}
    for line in template.render(fmt or "table {{.Driver}}\t{{.Name}}", rows, headers):
        click.echo(line)


@volume.command("inspect")
@click.option("-f", "--format", "fmt", metavar="TEMPLATE", help="Go template for each volume.")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(host: str, fmt: str | None, names: tuple[str, ...]) -> None:
    """Show volumes in detail."""
    inspect_each(names, connect(host).volume, fmt)


@volume.command("rm")
@click.option("-f", "--force", is_flag=True, help="Accepted for docker's sake: a volume in use is never removed.")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(host: str, force: bool, names: tuple[str, ...]) -> None:
    """Remove volumes (not while a container names them)."""
    client = connect(host)
    each(names, then_echo(client.remove_volume))


@volume.command("prune")
@click.option("-a", "--all", "everything", is_flag=True, help="Named volumes too, not only anonymous ones.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def prune(host: str, everything: bool, force: bool) -> None:
    """Remove the volumes no container uses."""
    if not force and not click.confirm("WARNING! This will remove all local volumes not used by at least one "
                                       "container.\nAre you sure you want to continue?"):
        return
    result = connect(host).prune_volumes(everything)
    removed = result.get("VolumesDeleted") or []
    if removed:
        click.echo("Deleted Volumes:")
        for name in removed:
            click.echo(name)
    click.echo(f"Total reclaimed space: {output.size(result.get('SpaceReclaimed') or 0)}")


volume.add_command(ls, "list")
volume.add_command(rm, "remove")
