"""Network commands: ``hyper network create|ls|inspect|rm|connect|disconnect|prune`` and ``hyper port``,
and the ``run``/``create`` flags that wire a container to them."""

from __future__ import annotations

from typing import Any

import click

from cli.common import connect, each, inspect_each
from cli.errors import HyperError


def endpoint_config(aliases: tuple[str, ...], ip: str, mac: str = "") -> dict[str, Any]:
    """Docker's EndpointConfig for ``--network-alias``, ``--ip`` and ``--mac-address``."""
    config: dict[str, Any] = {}
    if aliases:
        config["Aliases"] = list(aliases)
    if ip:
        config["IPAMConfig"] = {"IPv4Address": ip}
    if mac:
        config["MacAddress"] = mac
    return config


def port_bindings(specs: tuple[str, ...]) -> dict[str, list[dict[str, str]]]:
    """``-p`` flags as docker's PortBindings; a malformed one is refused here, before anything is made."""
    if not specs:
        return {}
    from hyperd.errors import HyperError as DaemonError
    from hyperd.network import ports

    found: dict[str, list[dict[str, str]]] = {}
    for spec in specs:
        try:
            bindings = ports.parse(spec)
        except DaemonError as err:
            raise HyperError(str(err)) from None
        for b in bindings:
            host_port = f"{b.host_port}-{b.host_port_end}" if b.host_port_end else str(b.host_port or "")
            found.setdefault(b.key, []).append({"HostIp": b.host_ip, "HostPort": host_port})
    return found


def port_text(ports: list[dict[str, Any]]) -> str:
    """``docker ps``'s PORTS: ``0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp``."""
    shown = []
    for p in ports:
        ip = str(p.get("IP") or "")
        host = f"[{ip}]" if ":" in ip else ip
        shown.append(f"{host}:{p.get('PublicPort')}->{p.get('PrivatePort')}/{p.get('Type')}")
    return ", ".join(shown)


@click.command()
@click.argument("container")
@click.argument("port", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
@click.pass_obj
def port(host: str, container: str, port: str | None) -> None:
    """List the published ports of CONTAINER, or where one of its ports is published."""
    settings = connect(host).inspect(container).get("NetworkSettings") or {}
    published = settings.get("Ports") or {}
    if port is not None:
        key = port if "/" in port else f"{port}/tcp"
        entries = published.get(key)
        if not entries:
            raise HyperError(f"no public port '{key}' published for {container}")
        for entry in entries:
            click.echo(f"{entry['HostIp']}:{entry['HostPort']}")
        return
    for key, entries in published.items():
        for entry in entries or ():
            click.echo(f"{key} -> {entry['HostIp']}:{entry['HostPort']}")


@click.group("network")
def network() -> None:
    """Manage networks."""


@network.command("create")
@click.option("-d", "--driver", default="bridge", show_default=True, help="Only bridge networks can be created.")
@click.option("--subnet", default="", metavar="CIDR", help="The network's subnet (default: a free /24 of 10.29/16).")
@click.option("--gateway", default="", metavar="IP", help="The gateway address (default: the subnet's first).")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Set metadata (repeatable).")
@click.argument("name")
@click.pass_obj
def create(host: str, driver: str, subnet: str, gateway: str, labels: tuple[str, ...], name: str) -> None:
    """Create a network; print its ID."""
    config: dict[str, Any] = {"Name": name, "Driver": driver,
                              "Labels": dict(label.partition("=")[::2] for label in labels)}
    if subnet or gateway:
        config["IPAM"] = {"Config": [{"Subnet": subnet, "Gateway": gateway}]}
    click.echo(connect(host).create_network(config)["Id"])


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print network IDs.")
@click.option("--format", "fmt", metavar="TEMPLATE", help="Go template, 'table TEMPLATE' or 'json'.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the IDs.")
@click.pass_obj
def ls(host: str, quiet: bool, fmt: str | None, no_trunc: bool) -> None:
    """List networks."""
    from cli import template

    rows = [{"ID": n["Id"] if no_trunc else n["Id"][:12], "Name": n["Name"], "Driver": n["Driver"],
             "Scope": n["Scope"]} for n in connect(host).networks()]
    if quiet:
        for row in rows:
            click.echo(row["ID"])
        return
    headers = {"ID": "NETWORK ID"}
    for line in template.render(fmt or "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}", rows, headers):
        click.echo(line)


@network.command("inspect")
@click.option("-f", "--format", "fmt", metavar="TEMPLATE", help="Go template for each network.")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(host: str, fmt: str | None, names: tuple[str, ...]) -> None:
    """Show networks in detail."""
    inspect_each(names, connect(host).network, fmt)


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(host: str, names: tuple[str, ...]) -> None:
    """Remove networks (not while a running container uses them)."""
    client = connect(host)

    def remove(name: str) -> None:
        client.remove_network(name)
        click.echo(name)

    each(names, remove)


@network.command("connect")
@click.option("--alias", "aliases", multiple=True, metavar="NAME", help="Another name on this network.")
@click.option("--ip", default="", metavar="IP", help="The container's address on this network.")
@click.argument("name")
@click.argument("container")
@click.pass_obj
def connect_(host: str, aliases: tuple[str, ...], ip: str, name: str, container: str) -> None:
    """Connect a (stopped) container to a network, from its next start."""
    connect(host).connect_network(name, container, endpoint_config(aliases, ip))


@network.command("disconnect")
@click.argument("name")
@click.argument("container")
@click.pass_obj
def disconnect(host: str, name: str, container: str) -> None:
    """Disconnect a (stopped) container from a network."""
    connect(host).disconnect_network(name, container)


@network.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def prune(host: str, force: bool) -> None:
    """Remove every network no container is connected to."""
    if not force and not click.confirm("WARNING! This will remove all custom networks not used by at least one "
                                       "container.\nAre you sure you want to continue?"):
        return
    removed = connect(host).prune_networks().get("NetworksDeleted") or []
    if removed:
        click.echo("Deleted Networks:")
        for name in removed:
            click.echo(name)


network.add_command(ls, "list")
network.add_command(rm, "remove")
