"""``hyper``: docker-style commands against hyperd.

Start-up time is part of the benchmark, so this module imports click and nothing heavy;
the HTTP client and everything a command needs are imported inside that command.
Every failure ends as one ``hyper: <message>`` line and Docker's exit codes: 125 for usage,
client and daemon errors, 126/127 when the container's command cannot run, else the
container's own status. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cli import events, files, images, network, pod, stats, volume
from cli.common import connect, each, inspect_each, say, then_echo
from cli.errors import EXIT_DAEMON, HyperError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cli.client import Client


DEFAULT_HOST = "unix:///run/hyper/hyperd.sock"
EXIT_INTERRUPTED = 130


class HyperGroup(click.Group):
    """The top-level group; owns the translation of every failure into one line and an exit code."""

    debug = False

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help())
            ctx.exit()
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        self.debug = bool(ctx.params.get("debug"))
        return super().invoke(ctx)

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        self.debug = False
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "hyper")
        try:
            status = super().main(*args, **kwargs)
        except click.UsageError as err:
            if isinstance(err, click.NoSuchOption):
                say(f"unknown flag: {err.option_name}")
            else:
                say(err.format_message())
            command = err.ctx.command_path if err.ctx else "hyper"
            click.echo(f"See '{command} --help'.", err=True)
            sys.exit(EXIT_DAEMON)
        except click.ClickException as err:
            say(err.format_message())
            sys.exit(EXIT_DAEMON)
        except click.Abort:
            sys.exit(EXIT_INTERRUPTED)
        except HyperError as err:
            self._traceback()
            say(err.message)
            sys.exit(err.exit_code)
        except Exception as err:
            self._traceback()
            say(str(err) or type(err).__name__)
            sys.exit(EXIT_DAEMON)
        sys.exit(status if isinstance(status, int) else 0)

    def _traceback(self) -> None:
        if self.debug:
            import traceback

            traceback.print_exc()


def _check_host(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith("unix://") or value == "unix://":
        raise click.BadParameter(f"only unix:///PATH is supported, not {value!r}")
    return value


@click.group("hyper", cls=HyperGroup)
@click.option(
    "-H",
    "--host",
    envvar="HYPER_HOST",
    default=DEFAULT_HOST,
    show_default=True,
    metavar="unix:///PATH",
    callback=_check_host,
    help="hyperd's socket [env: HYPER_HOST].",
)
@click.option("--config", metavar="DIR", help="Client configuration directory [env: HYPER_CONFIG; default ~/.hyper].")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, host: str, config: str | None, debug: bool) -> None:
    """Run containers, each pod in its own micro-VM."""
    ctx.obj = host


def _options(items: Iterable[str], flag: str, bare: bool = False) -> dict[str, str]:
    """``KEY=VALUE`` flags as a mapping, as docker sends ``--storage-opt`` and the like (with
    ``bare``, a lone ``KEY`` has an empty value, as ``--label`` allows)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or not (sep or bare):
            raise HyperError(f"invalid {flag} {item!r}: expected KEY=VALUE")
        options[key] = value
    return options


def _bytes(text: str, flag: str) -> int:
    """``512m`` as bytes (0 when not given); a malformed size is refused here."""
    if not text:
        return 0
    from hyperd.errors import HyperError as DaemonError
    from hyperd.isolation import parse_size

    try:
        return parse_size(text, flag)
    except DaemonError as err:
        raise HyperError(str(err)) from None


def _device(text: str) -> dict[str, str]:
    """``--device HOST[:CONTAINER[:PERMS]]`` as docker's Devices entry (hyperd checks it)."""
    from hyperd.isolation import split_device

    host, target, permissions = split_device(text)
    return {"PathOnHost": host, "PathInContainer": target, "CgroupPermissions": permissions}


def _env_files(paths: Iterable[str]) -> list[str]:
    """``--env-file``: ``K=V`` per line (``#`` comments and blank lines skipped, a bare ``K`` copied
    from our environment), in the order given; ``-e`` comes after and wins."""
    items = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as err:
            raise HyperError(f"open {path}: {(err.strerror or str(err)).lower()}") from None
        for line in lines:
            text = line.lstrip()
            if text and not text.startswith("#"):
                if "=" not in text and text not in os.environ:
                    continue  # docker skips a bare name that is not set
                items.append(text)
    return _environment(items)


def _security_opt(text: str) -> str:
    """``seccomp=FILE`` as the daemon takes it, ``seccomp=`` and the profile's JSON, as docker's CLI does."""
    from hyperd.isolation import SECCOMP_NAMED, split_security_opt

    key, value = split_security_opt(text)
    if key != "seccomp" or value in SECCOMP_NAMED:
        return text
    try:
        with open(value, encoding="utf-8") as f:
            return f"seccomp={f.read()}"
    except OSError as err:
        raise HyperError(f"opening seccomp profile ({value}) failed: {(err.strerror or str(err)).lower()}") from None


def _ulimit(text: str) -> dict[str, Any]:
    """``--ulimit nofile=1024:2048`` as docker's {Name, Soft, Hard} (hyperd checks the name)."""
    name, _, values = text.partition("=")
    soft, _, hard = values.partition(":")
    try:
        return {"Name": name, "Soft": int(soft), "Hard": int(hard or soft)}
    except ValueError:
        raise HyperError(f"invalid ulimit {text!r}: use NAME=SOFT[:HARD]") from None


def _restart_policy(text: str) -> dict[str, Any]:
    """``--restart on-failure:3`` as docker's RestartPolicy object (hyperd checks the name)."""
    name, _, count = text.partition(":")
    if count and not count.isdigit():
        raise HyperError(f"invalid restart policy {text!r}: the maximum retry count must be a number")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _environment(items: Iterable[str]) -> list[str]:
    """``-e`` values as ``K=V``; a bare ``K`` takes its value from our own environment."""
    env = []
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise HyperError(f"invalid -e {item}: the variable name is empty")
        if not sep:
            if name not in os.environ:
                raise HyperError(f"invalid -e {name}: {name} is not set in the environment")
            value = os.environ[name]
        env.append(f"{name}={value}")
    return env


def _container_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options ``run`` and ``create`` share, then IMAGE and its command."""
    options = [
        click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits."),
        click.option("--name", metavar="NAME", help="Name the container."),
        click.option("-e", "--env", multiple=True, metavar="K=V",
                     help="Set an environment variable; a bare K copies ours (repeatable)."),
        click.option("-w", "--workdir", default="", metavar="DIR", help="Working directory inside the container."),
        click.option("--entrypoint", metavar="CMD", help="Replace the image's entrypoint (and drop its command)."),
        click.option("-u", "--user", default="", metavar="USER[:GROUP]", help="User (and group) to run as."),
        click.option("--pull", "pull_policy", type=click.Choice(["missing", "always", "never"]), default="missing",
                     show_default=True, help="When to pull the image before creating the container."),
        click.option("--platform", default="", metavar="OS/ARCH[/VARIANT]", help="Platform to pull, if pulling."),
        click.option("--storage-opt", "storage_opts", multiple=True, metavar="size=SIZE",
                     help="Give the container a writable disk of its own of SIZE (512M, 2G): a hard limit, kept "
                          "across restarts."),
        click.option("--env-file", "env_files", multiple=True, metavar="FILE",
                     help="Read environment variables from FILE, K=V per line (repeatable)."),
        click.option("-l", "--label", "labels", multiple=True, metavar="K=V", help="Set a label (repeatable)."),
        click.option("--stop-signal", default="", metavar="SIGNAL", help="The signal that stops the container."),
        click.option("--stop-timeout", type=int, metavar="SECS", help="Seconds to wait for a stop before SIGKILL."),
        click.option("--init", is_flag=True,
                     help="Run an init as the container's PID 1 (hyper always does: a reaper forwards signals)."),
        click.option("--ulimit", "ulimits", multiple=True, metavar="NAME=SOFT[:HARD]",
                     help="A resource limit, e.g. nofile=1024:2048 (repeatable)."),
        click.option("--sysctl", "sysctls", multiple=True, metavar="K=V",
                     help="A namespaced kernel setting, e.g. net.ipv4.ip_forward=1 (repeatable)."),
        click.option("-m", "--memory", default="", metavar="BYTES", help="Memory limit (512m, 1g)."),
        click.option("--memory-swap", default="", metavar="BYTES", help="Memory plus swap limit; -1 unlimited."),
        click.option("--cpus", type=float, default=0.0, metavar="N", help="CPUs the container may use (1.5)."),
        click.option("-c", "--cpu-shares", type=int, default=0, metavar="N", help="Relative CPU weight."),
        click.option("--cpuset-cpus", default="", metavar="LIST", help="CPUs the container may run on (0-1,3)."),
        click.option("--pids-limit", type=int, default=0, metavar="N", help="Most processes; -1 unlimited."),
        click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability, or ALL (repeatable)."),
        click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability, or ALL (repeatable)."),
        click.option("--privileged", is_flag=True, help="Every capability, no masked paths."),
        click.option("--security-opt", multiple=True, metavar="OPT",
                     help="no-new-privileges[:true|false], seccomp=unconfined|PROFILE.json (repeatable)."),
        click.option("--read-only", is_flag=True, help="Mount the container's root filesystem read-only."),
        click.option("--tmpfs", multiple=True, metavar="PATH[:OPTIONS]", help="Mount a tmpfs (repeatable)."),
        click.option("-v", "--volume", "volumes", multiple=True, metavar="[SOURCE:]TARGET[:OPTIONS]",
                     help="A host directory (absolute SOURCE) or a named volume at TARGET; ro (repeatable)."),
        click.option("--pod", default="", metavar="POD", help="Run in a running pod's VM, on its network."),
        click.option("--log-driver", default="", metavar="DRIVER", help="json-file (default), syslog or none."),
        click.option("--log-opt", "log_opts", multiple=True, metavar="K=V",
                     help="max-size, max-file (json-file); syslog-address, syslog-facility, syslog-format, tag."),
        click.option("--mount", "mounts", multiple=True, metavar="type=bind|volume|tmpfs,source=..,target=..",
                     help="A bind mount, volume or tmpfs, in docker's --mount syntax (repeatable)."),
        click.option("--device", "devices", multiple=True, metavar="HOST[:CONTAINER[:PERMS]]",
                     help="A host block device or image file as a device of the container (repeatable)."),
        click.option("--restart", default="no", metavar="POLICY",
                     help="no, on-failure[:N], always or unless-stopped: restart the container when it exits."),
        click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and attached."),
        click.option("-t", "--tty", is_flag=True, help="Give the command a terminal."),
        click.option("-h", "--hostname", default="", metavar="NAME", help="The container's host name."),
        click.option("--network", "--net", "network", default="", metavar="NETWORK",
                     help="Connect to NETWORK: bridge (default), a network of 'hyper network create', none, "
                          "or user (QEMU user-mode networking)."),
        click.option("--network-alias", "--net-alias", "aliases", multiple=True, metavar="NAME",
                     help="Another name other pods of the network resolve (repeatable)."),
        click.option("--ip", default="", metavar="IPV4", help="The address on a user-created network."),
        click.option("--mac-address", "mac", default="", metavar="MAC", help="The MAC address (02:42:ac:11:00:02)."),
        click.option("-p", "--publish", multiple=True, metavar="[IP:][HOST:]PORT[/PROTO]",
                     help="Publish a container port on the host; ranges allowed (repeatable)."),
        click.option("-P", "--publish-all", is_flag=True, help="Publish every exposed port on a free host port."),
        click.option("--expose", multiple=True, metavar="PORT[/PROTO]", help="Expose a port (for -P) (repeatable)."),
        click.option("--dns", multiple=True, metavar="IP", help="A DNS server for the container (repeatable)."),
        click.option("--dns-search", multiple=True, metavar="DOMAIN", help="A DNS search domain (repeatable)."),
        click.option("--dns-option", "dns_options", multiple=True, metavar="OPTION",
                     help="A resolv.conf option (repeatable)."),
        click.option("--add-host", "add_hosts", multiple=True, metavar="HOST:IP",
                     help="Add a line to /etc/hosts (repeatable)."),
        click.argument("image"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[COMMAND] [ARG]..."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _new_container(host: str, name: str | None, pull_policy: str, platform: str, image: str,
                   command: tuple[str, ...], once: bool = False, **settings: Any) -> tuple[Client, str]:
    """Create the container ``run`` and ``create`` describe; the client and the container's id.
    ``once``: its stdin ends with the input of the client that starts it (``run -i``)."""
    config = {
        "Image": image,
        "Cmd": list(command) or None,
        # An empty --entrypoint clears the image's; null keeps it.
        "Entrypoint": None if settings["entrypoint"] is None else [settings["entrypoint"]] if settings["entrypoint"]
        else [],
        "Env": _env_files(settings["env_files"]) + _environment(settings["env"]),
        "WorkingDir": settings["workdir"],
        "User": settings["user"],
        "AutoRemove": settings["auto_remove"],
        "StorageOpt": _options(settings["storage_opts"], "--storage-opt"),
        "Hostname": settings["hostname"],
        "NetworkMode": settings["network"],
        "PortBindings": network.port_bindings(settings["publish"]),
        "PublishAllPorts": settings["publish_all"],
        "ExposedPorts": {(port if "/" in port else f"{port}/tcp"): {} for port in settings["expose"]},
        "Dns": list(settings["dns"]),
        "DnsSearch": list(settings["dns_search"]),
        "DnsOptions": list(settings["dns_options"]),
        "ExtraHosts": list(settings["add_hosts"]),
        "Tty": settings["tty"],
        "OpenStdin": settings["interactive"],
        "StdinOnce": settings["interactive"] and once,
        "RestartPolicy": _restart_policy(settings["restart"]),
        "Labels": _options(settings["labels"], "--label", bare=True),
        "StopSignal": settings["stop_signal"],
        "StopTimeout": settings["stop_timeout"],
        "Init": settings["init"],
        "Ulimits": [_ulimit(text) for text in settings["ulimits"]],
        "Sysctls": _options(settings["sysctls"], "--sysctl"),
        "Memory": _bytes(settings["memory"], "--memory"),
        "MemorySwap": -1 if settings["memory_swap"] == "-1" else _bytes(settings["memory_swap"], "--memory-swap"),
        "NanoCpus": round(settings["cpus"] * 1e9),
        "CpuShares": settings["cpu_shares"],
        "CpusetCpus": settings["cpuset_cpus"],
        "PidsLimit": settings["pids_limit"],
        "CapAdd": list(settings["cap_add"]),
        "CapDrop": list(settings["cap_drop"]),
        "Privileged": settings["privileged"],
        "SecurityOpt": [_security_opt(text) for text in settings["security_opt"]],
        "ReadonlyRootfs": settings["read_only"],
        "Tmpfs": dict(item.partition(":")[::2] for item in settings["tmpfs"]),
        "Binds": [volume.bind(text) for text in settings["volumes"]],
        "Pod": settings["pod"],
        "LogConfig": {"Type": settings["log_driver"], "Config": _options(settings["log_opts"], "--log-opt")},
        "Devices": [_device(text) for text in settings["devices"]],
    }
    for text in settings["mounts"]:
        entry, tmpfs = volume.mount(text)
        if entry is not None:
            config.setdefault("Mounts", []).append(entry)
        if tmpfs is not None:
            config["Tmpfs"][tmpfs[0]] = tmpfs[1]
    endpoint = network.endpoint_config(settings["aliases"], settings["ip"], settings["mac"])
    if endpoint:
        config["NetworkingConfig"] = {"EndpointsConfig": {settings["network"] or "default": endpoint}}
    client = connect(host)
    created = _create(client, config, name, pull_policy, platform)
    for warning in created.get("Warnings") or ():
        click.echo(f"WARNING: {warning}", err=True)
    return client, str(created["Id"])


def _detach_keys(spec: str) -> bytes:
    from cli import terminal

    try:
        return terminal.parse_keys(spec)
    except ValueError as err:
        raise HyperError(str(err)) from None


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Start in the background and print the container ID.")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="The keys that leave an interactive session with the container running.")
@_container_options
@click.pass_obj
def run(host: str, /, detach: bool, detach_keys: str, name: str | None, pull_policy: str, platform: str, image: str,
        command: tuple[str, ...], **settings: Any) -> None:
    """Run COMMAND in a new container from IMAGE. Options go before IMAGE."""
    from cli import attach

    keys = _detach_keys(detach_keys)
    if not detach:
        attach.check_terminal(settings["interactive"], settings["tty"])
    client, container = _new_container(host, name, pull_policy, platform, image, command,
                                       once=not detach, **settings)
    if detach:
        client.start(container)
        click.echo(container)
        return
    sys.exit(attach.run(client, container, settings["interactive"], settings["tty"], keys))


@cli.command(context_settings={"allow_interspersed_args": False})
@_container_options
@click.pass_obj
def create(host: str, /, name: str | None, pull_policy: str, platform: str, image: str, command: tuple[str, ...],
           **settings: Any) -> None:
    """Create a container from IMAGE without starting it; print its ID. Options go before IMAGE."""
    _, container = _new_container(host, name, pull_policy, platform, image, command, once=True, **settings)
    click.echo(container)


def _create(client: Client, config: dict[str, Any], name: str | None, pull_policy: str, platform: str) -> Any:
    """Create the container, pulling its image first as ``--pull`` says (progress on stderr, as docker)."""
    from cli.errors import APIError

    reference = config["Image"]
    if pull_policy == "always":
        images.pull_image(client, reference, platform, sys.stderr)
        return client.create_container(config, name)
    try:
        return client.create_container(config, name)
    except APIError as err:
        if err.status != 404 or not err.message.startswith("No such image") or pull_policy == "never":
            raise
    click.echo(f"Unable to find image '{images.with_default_tag(reference)}' locally", err=True)
    images.pull_image(client, reference, platform, sys.stderr)
    return client.create_container(config, name)


PS_HEADERS = {"ID": "CONTAINER ID", "RunningFor": "CREATED", "CreatedAt": "CREATED AT"}
"""``table`` headers docker prints for these fields of ``hyper ps --format``."""
PS_FILTERS = ("id", "name", "status", "ancestor", "label")
POD_LABEL = "io.hyper.pod"
"""The label hyperd gives each container of a pod: the pod's name."""


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers, not only running ones.")
@click.option("-q", "--quiet", is_flag=True, help="Only print container IDs.")
@click.option("-n", "--last", "last", type=int, default=-1, metavar="N", help="The N newest containers (any state).")
@click.option("-l", "--latest", is_flag=True, help="The newest container (any state).")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only containers matching: id=, name=, status=, ancestor=, label=K[=V] (repeatable).")
@click.option("--format", "fmt", metavar="TEMPLATE", help="Go template, 'table TEMPLATE' or 'json'.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.pass_obj
def ps(host: str, show_all: bool, quiet: bool, last: int, latest: bool, filters: tuple[str, ...], fmt: str | None,
       no_trunc: bool) -> None:
    """List containers, newest first."""
    from cli import template

    wanted = _options(filters, "--filter")
    unknown = sorted(set(wanted) - set(PS_FILTERS))
    if unknown:
        raise HyperError(f"invalid filter '{unknown[0]}': use {', '.join(PS_FILTERS)}")
    limit = 1 if latest else last
    containers = connect(host).containers(show_all or limit >= 0 or bool(filters))
    rows = _container_rows([c for c in containers if _matches(c, wanted)], no_trunc)
    if limit >= 0:
        rows = rows[:limit]
    if quiet:
        for row in rows:
            click.echo(row["ID"])
        return
    # A POD column only when some container is in a pod: otherwise the output is docker's own.
    pods = "\t{{.Pod}}" if any(row["Pod"] for row in rows) else ""
    fmt = fmt or "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}" + pods + \
        "\t{{.Names}}"
    for line in template.render(fmt, rows, PS_HEADERS):
        click.echo(line)


def _container_rows(containers: list[dict[str, Any]], no_trunc: bool) -> list[dict[str, str]]:
    """One row per container with docker's ``ps`` field names, for templates and filters."""
    import time

    from cli import output

    now = time.time()
    rows = []
    for c in containers:
        command = c.get("Command") or ""
        created = c.get("Created")
        rows.append({
            "ID": c["Id"] if no_trunc else c["Id"][:12],
            "Image": c.get("Image") or "",
            "Command": output.quoted(command if no_trunc else output.ellipsis(command, 20)),
            "RunningFor": output.ago(created, now) if isinstance(created, int | float) else "",
            "CreatedAt": images.local_time(created) if isinstance(created, int | float) else "",
            "Status": c.get("Status") or "",
            "State": c.get("State") or "",
            "Ports": network.port_text(c.get("Ports") or []),
            "Names": ",".join(name.lstrip("/") for name in c.get("Names") or ()),
            "Pod": str((c.get("Labels") or {}).get(POD_LABEL) or ""),
        })
    return rows


def _matches(container: dict[str, Any], wanted: dict[str, str]) -> bool:
    """docker's ps filters: an id prefix, a name substring, a state, an image as given."""
    for key, value in wanted.items():
        if key == "id" and not str(container.get("Id") or "").startswith(value):
            return False
        if key == "name" and not any(value in name for name in container.get("Names") or ()):
            return False
        if key == "status" and container.get("State") != value:
            return False
        if key == "label":
            name, eq, wanted_value = value.partition("=")
            labels = container.get("Labels") or {}
            if name not in labels or (eq and labels[name] != wanted_value):
                return False
        if key == "ancestor" and container.get("Image") != value:
            return False
    return True


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its timestamp.")
@click.option("--tail", default="all", metavar="N", help="Only the last N lines.")
@click.option("--since", metavar="TIME", help="Only lines since TIME (Unix seconds, 10m, RFC 3339).")
@click.option("--until", metavar="TIME", help="Only lines before TIME.")
@click.argument("container")
@click.pass_obj
def logs(host: str, follow: bool, timestamps: bool, tail: str, since: str | None, until: str | None,
         container: str) -> None:
    """Print a container's output."""
    if tail != "all" and not tail.isdigit():
        raise click.BadParameter(f"{tail!r} is not a number or 'all'", param_hint="'--tail'")
    from cli import stdcopy

    with connect(host).logs(container, follow, timestamps, tail, events.moment(since) if since else None,
                            events.moment(until) if until else None) as stream:
        if stream.multiplexed:
            stdcopy.demux(stream, sys.stdout.buffer, sys.stderr.buffer)
        else:
            stdcopy.copy_raw(stream, sys.stdout.buffer)


@cli.command()
@click.option("-o", "--output", "path", metavar="FILE", help="Write to FILE instead of standard output.")
@click.argument("container")
@click.pass_obj
def export(host: str, path: str | None, container: str) -> None:
    """Export a container's filesystem (its image with its changes) as a tar archive."""
    from cli.common import refuse_terminal, write_archive

    refuse_terminal(path)
    with connect(host).export(container) as stream:
        write_archive(stream, path)


@cli.command()
@click.option("-t", "--time", "timeout", type=int, metavar="SECS", help="Seconds to wait before killing it.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def restart(host: str, timeout: int | None, containers: tuple[str, ...]) -> None:
    """Stop containers (if running) and start them again, each in a new VM."""
    client = connect(host)

    def again(container: str) -> None:
        client.stop(container, timeout)
        client.start(container)

    each(containers, then_echo(again))


@cli.command()
@click.option("-a", "--attach", "attached", is_flag=True,
              help="Attach to the output; exit with the container's status.")
@click.option("-i", "--interactive", is_flag=True, help="Attach stdin too.")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="The keys that leave an attached session with the container running.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def start(host: str, attached: bool, interactive: bool, detach_keys: str, containers: tuple[str, ...]) -> None:
    """Start created or exited containers (each boots a new VM), in the background unless -a/-i."""
    client = connect(host)
    if not (attached or interactive):
        each(containers, then_echo(client.start))
        return
    from cli import attach

    if len(containers) > 1:
        raise HyperError("you cannot start and attach multiple containers at once")
    keys = _detach_keys(detach_keys)
    config = client.inspect(containers[0]).get("Config") or {}
    stdin, tty = interactive and bool(config.get("OpenStdin")), bool(config.get("Tty"))
    sys.exit(attach.run(client, containers[0], stdin, tty, keys))


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def pause(host: str, containers: tuple[str, ...]) -> None:
    """Freeze running containers: their whole VMs stop, memory kept."""
    each(containers, then_echo(connect(host).pause))


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def unpause(host: str, containers: tuple[str, ...]) -> None:
    """Let paused containers run again."""
    each(containers, then_echo(connect(host).unpause))


@cli.command()
@click.option("-m", "--memory", default="", metavar="BYTES", help="Memory limit (512m, 1g).")
@click.option("--memory-swap", default="", metavar="BYTES", help="Memory plus swap limit; -1 unlimited.")
@click.option("--cpus", type=float, metavar="N", help="CPUs the container may use.")
@click.option("-c", "--cpu-shares", type=int, metavar="N", help="Relative CPU weight.")
@click.option("--cpuset-cpus", metavar="LIST", help="CPUs the container may run on.")
@click.option("--pids-limit", type=int, metavar="N", help="Most processes.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def update(host: str, memory: str, memory_swap: str, cpus: float | None, cpu_shares: int | None,
           cpuset_cpus: str | None, pids_limit: int | None, containers: tuple[str, ...]) -> None:
    """Change the resource limits of containers (a running one's at once, in its VM)."""
    changes: dict[str, Any] = {}
    if memory:
        changes["Memory"] = _bytes(memory, "--memory")
    if memory_swap:
        changes["MemorySwap"] = -1 if memory_swap == "-1" else _bytes(memory_swap, "--memory-swap")
    for key, value in (("NanoCpus", None if cpus is None else round(cpus * 1e9)), ("CpuShares", cpu_shares),
                       ("CpusetCpus", cpuset_cpus), ("PidsLimit", pids_limit)):
        if value is not None:
            changes[key] = value
    if not changes:
        raise HyperError("you must provide one or more flags when using this command")
    client = connect(host)
    each(containers, then_echo(lambda name: client.update(name, changes)))


@cli.command("attach")
@click.option("--no-stdin", is_flag=True, help="Do not attach stdin.")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="The keys that leave the session with the container running.")
@click.argument("container")
@click.pass_obj
def attach_command(host: str, no_stdin: bool, detach_keys: str, container: str) -> None:
    """Attach to a running container's output (and stdin, if it has one open) until it exits."""
    from cli import attach

    keys = _detach_keys(detach_keys)
    client = connect(host)
    config = client.inspect(container).get("Config") or {}
    interactive, tty = bool(config.get("OpenStdin")) and not no_stdin, bool(config.get("Tty"))
    attach.check_terminal(interactive, tty)
    with client.attach(container, stdin=interactive) as stream, client.wait_later(container) as waiting:
        # Checked once attached: a container that exits in between cannot leave us waiting for its next run.
        if not (client.inspect(container).get("State") or {}).get("Running"):
            raise HyperError("You cannot attach to a stopped container, start it first")
        if attach.session(stream, interactive, tty, lambda rows, cols: client.resize(container, rows, cols), keys):
            return
        sys.exit(attach.exit_status(waiting.result()))


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and attached.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable (repeatable).")
@click.option("-w", "--workdir", default="", metavar="DIR", help="Working directory inside the container.")
@click.option("-u", "--user", default="", metavar="USER[:GROUP]", help="User (and group) to run as.")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="The keys that leave an interactive session with the command running.")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_command(host: str, detach: bool, interactive: bool, tty: bool, env: tuple[str, ...], workdir: str,
                 user: str, detach_keys: str, container: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in a running container; exit with its status."""
    from cli import attach

    keys = _detach_keys(detach_keys)
    if not detach:
        attach.check_terminal(interactive, tty)
    client = connect(host)
    exec_id = str(client.create_exec(container, {
        "Cmd": list(command), "Env": _environment(env), "WorkingDir": workdir, "User": user, "Tty": tty,
        "AttachStdin": interactive and not detach})["Id"])
    stream = client.start_exec(exec_id, stdin=interactive and not detach, detach=detach)
    if stream is None:
        return
    with stream:
        if attach.session(stream, interactive, tty,
                          lambda rows, cols: client.resize(container, rows, cols, exec_id), keys):
            return
    code = client.inspect_exec(exec_id).get("ExitCode")
    sys.exit(code if isinstance(code, int) else EXIT_DAEMON)


@cli.command()
@click.option("-t", "--time", "timeout", type=int, metavar="SECS", help="Seconds to wait before killing it.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def stop(host: str, timeout: int | None, containers: tuple[str, ...]) -> None:
    """Stop running containers: SIGTERM, then SIGKILL after a grace period."""
    client = connect(host)
    each(containers, then_echo(lambda container: client.stop(container, timeout)))


@cli.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal to send.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def kill(host: str, sig: str, containers: tuple[str, ...]) -> None:
    """Send a signal to running containers."""
    client = connect(host)
    each(containers, then_echo(lambda container: client.kill(container, sig)))


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running container.")
@click.option("-v", "--volumes", is_flag=True, help="Remove the container's anonymous volumes too.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def rm(host: str, force: bool, volumes: bool, containers: tuple[str, ...]) -> None:
    """Remove containers."""
    client = connect(host)
    each(containers, then_echo(lambda container: client.remove(container, force, volumes)))


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def wait(host: str, containers: tuple[str, ...]) -> None:
    """Wait for containers to exit and print their exit statuses."""
    from cli.attach import exit_status

    client = connect(host)
    each(containers, lambda container: click.echo(exit_status(client.wait(container))))


@cli.command()
@click.option("-f", "--format", "fmt", metavar="TEMPLATE", help="Go template for each object.")
@click.option("--type", "kind", type=click.Choice(["container", "image"]), help="Only look for this kind of object.")
@click.argument("names", nargs=-1, required=True, metavar="NAME|ID...")
@click.pass_obj
def inspect(host: str, fmt: str | None, kind: str | None, names: tuple[str, ...]) -> None:
    """Show containers' or images' details as JSON; a name is looked up as a container first."""
    from cli.errors import APIError

    client = connect(host)

    def look_up(name: str) -> dict[str, Any]:
        if kind != "image":
            try:
                return dict(client.inspect(name))
            except APIError as err:
                if err.status != 404 or kind == "container":
                    raise
        try:
            return dict(client.image(name))
        except APIError as err:
            if err.status == 404 and kind is None:
                raise HyperError(f"No such object: {name}") from err
            raise

    inspect_each(names, look_up, fmt)


@cli.command()
@click.pass_obj
def info(host: str) -> None:
    """Show system-wide information from hyperd."""
    from cli import output

    for line in output.tree(connect(host).info()):
        click.echo(line)


@cli.command()
@click.pass_obj
def version(host: str) -> None:
    """Show the client's and hyperd's versions."""
    import platform
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    from cli import output

    try:
        client_version = package_version("hyper")
    except PackageNotFoundError:
        from cli import __version__ as client_version
    client = {
        "Version": client_version,
        "Python": platform.python_version(),
        "OS/Arch": f"{sys.platform}/{platform.machine()}",
    }
    click.echo("Client:")
    for line in output.tree(client, indent=1, align=True):
        click.echo(line)
    server = connect(host).version()
    click.echo("\nServer:")
    for line in output.tree(server if isinstance(server, dict) else {"Version": server}, indent=1, align=True):
        click.echo(line)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def daemon(args: tuple[str, ...]) -> None:
    """Run hyperd in the foreground; ARGS go to hyperd (see 'hyper daemon --help')."""
    try:
        from hyperd.main import main as daemon_main
    except ImportError as err:
        raise HyperError(f"cannot load hyperd: {err}") from err
    daemon_main(args=list(args), prog_name="hyper daemon", standalone_mode=True)


@cli.command()
@click.argument("container")
@click.argument("name")
@click.pass_obj
def rename(host: str, container: str, name: str) -> None:
    """Rename a container."""
    connect(host).rename(container, name)


@click.command()
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def prune(host: str, force: bool) -> None:
    """Remove every container that is not running."""
    from cli import output

    if not force:
        click.echo("WARNING! This will remove all stopped containers.")
        if not click.confirm("Are you sure you want to continue?", default=False):
            return
    result = connect(host).prune_containers() or {}
    deleted = result.get("ContainersDeleted") or []
    if deleted:
        click.echo("Deleted Containers:")
        for ident in deleted:
            click.echo(ident)
        click.echo()
    click.echo(f"Total reclaimed space: {output.size(result.get('SpaceReclaimed') or 0)}")


for _command in images.TOP_LEVEL:
    cli.add_command(_command)
cli.add_command(network.port)
cli.add_command(network.network)
cli.add_command(volume.volume)
cli.add_command(pod.pod)
cli.add_command(events.events)
cli.add_command(stats.top)
cli.add_command(stats.stats)
cli.add_command(files.cp)
cli.add_command(files.diff)
cli.add_command(files.commit)


@cli.group("container")
def container_group() -> None:
    """Manage containers."""


for _name, _command in {"ls": ps, "ps": ps, "create": create, "run": run, "start": start, "stop": stop,
                        "restart": restart, "kill": kill, "rm": rm, "wait": wait, "logs": logs, "rename": rename,
                        "export": export, "prune": prune, "port": network.port, "attach": attach_command,
                        "exec": exec_command, "pause": pause, "unpause": unpause, "top": stats.top, "update": update,
                        "stats": stats.stats, "cp": files.cp, "diff": files.diff, "commit": files.commit}.items():
    container_group.add_command(_command, _name)
container_group.add_command(inspect, "inspect")


@cli.group("image")
def image() -> None:
    """Manage images."""


for _name, _command in images.IMAGE_GROUP.items():
    image.add_command(_command, _name)


def main() -> NoReturn:
    """The ``hyper`` console script."""
    cli.main(prog_name="hyper")


if __name__ == "__main__":
    main()
