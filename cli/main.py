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

from cli.errors import EXIT_DAEMON, HyperError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cli.client import Client

DEFAULT_HOST = "unix:///run/hyper/hyperd.sock"
EXIT_INTERRUPTED = 130


def _say(message: str) -> None:
    click.echo(f"hyper: {message}", err=True)


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
                _say(f"unknown flag: {err.option_name}")
            else:
                _say(err.format_message())
            command = err.ctx.command_path if err.ctx else "hyper"
            click.echo(f"See '{command} --help'.", err=True)
            sys.exit(EXIT_DAEMON)
        except click.ClickException as err:
            _say(err.format_message())
            sys.exit(EXIT_DAEMON)
        except click.Abort:
            sys.exit(EXIT_INTERRUPTED)
        except HyperError as err:
            self._traceback()
            _say(err.message)
            sys.exit(err.exit_code)
        except Exception as err:
            self._traceback()
            _say(str(err) or type(err).__name__)
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
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, host: str, debug: bool) -> None:
    """Run containers, each pod in its own micro-VM."""
    ctx.obj = host


def _client(host: str) -> Client:
    from cli.client import Client

    return Client(host)


def _each(items: Iterable[str], action: Callable[[str], object]) -> None:
    """Apply ``action`` to every item, reporting each failure as it happens; fail at the end if any did."""
    failed: HyperError | None = None
    for item in items:
        try:
            action(item)
        except HyperError as err:
            _say(err.message)
            failed = err
    if failed is not None:
        sys.exit(failed.exit_code)


def _then_echo(action: Callable[[str], object]) -> Callable[[str], None]:
    """``action``, then the item's name on stdout, as docker confirms stop, kill and rm."""
    def run(item: str) -> None:
        action(item)
        click.echo(item)

    return run


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


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@click.option("-d", "--detach", is_flag=True, help="Start in the background and print the container ID.")
@click.option("--name", metavar="NAME", help="Name the container.")
@click.option(
    "-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable; a bare K copies ours (repeatable)."
)
@click.option("-w", "--workdir", default="", metavar="DIR", help="Working directory inside the container.")
@click.option("--entrypoint", metavar="CMD", help="Replace the image's entrypoint (and drop its command).")
@click.option("-u", "--user", default="", metavar="USER[:GROUP]", help="User (and group) to run as.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[COMMAND] [ARG]...")
@click.pass_obj
def run(
    host: str,
    auto_remove: bool,
    detach: bool,
    name: str | None,
    env: tuple[str, ...],
    workdir: str,
    entrypoint: str | None,
    user: str,
    image: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a new container from IMAGE. Options go before IMAGE."""
    config = {
        "Image": image,
        "Cmd": list(command) or None,
        # An empty --entrypoint clears the image's; null keeps it.
        "Entrypoint": None if entrypoint is None else [entrypoint] if entrypoint else [],
        "Env": _environment(env),
        "WorkingDir": workdir,
        "User": user,
        "AutoRemove": auto_remove,
    }
    client = _client(host)
    created = client.create_container(config, name)
    for warning in created.get("Warnings") or ():
        click.echo(f"WARNING: {warning}", err=True)
    container = created["Id"]
    if detach:
        client.start(container)
        click.echo(container)
        return
    from cli import attach

    sys.exit(attach.run(client, container))


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers, not only running ones.")
@click.option("-q", "--quiet", is_flag=True, help="Only print container IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.pass_obj
def ps(host: str, show_all: bool, quiet: bool, no_trunc: bool) -> None:
    """List containers."""
    import time

    from cli import output

    containers = _client(host).containers(show_all)
    ids = [c["Id"] if no_trunc else c["Id"][:12] for c in containers]
    if quiet:
        for ident in ids:
            click.echo(ident)
        return
    now = time.time()
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]]
    for ident, c in zip(ids, containers, strict=True):
        command = c.get("Command") or ""
        created = c.get("Created")
        rows.append(
            [
                ident,
                c.get("Image") or "",
                output.quoted(command if no_trunc else output.ellipsis(command, 20)),
                output.ago(created, now) if isinstance(created, int | float) else "",
                c.get("Status") or "",
                ",".join(name.lstrip("/") for name in c.get("Names") or ()),
            ]
        )
    click.echo(output.table(rows))


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its timestamp.")
@click.option("--tail", default="all", metavar="N", help="Only the last N lines.")
@click.argument("container")
@click.pass_obj
def logs(host: str, follow: bool, timestamps: bool, tail: str, container: str) -> None:
    """Print a container's output."""
    if tail != "all" and not tail.isdigit():
        raise click.BadParameter(f"{tail!r} is not a number or 'all'", param_hint="'--tail'")
    from cli import stdcopy

    with _client(host).logs(container, follow, timestamps, tail) as stream:
        if stream.multiplexed:
            stdcopy.demux(stream, sys.stdout.buffer, sys.stderr.buffer)
        else:
            stdcopy.copy_raw(stream, sys.stdout.buffer)


@cli.command()
@click.option("-t", "--time", "timeout", type=int, metavar="SECS", help="Seconds to wait before killing it.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def stop(host: str, timeout: int | None, containers: tuple[str, ...]) -> None:
    """Stop running containers: SIGTERM, then SIGKILL after a grace period."""
    client = _client(host)
    _each(containers, _then_echo(lambda container: client.stop(container, timeout)))


@cli.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal to send.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def kill(host: str, sig: str, containers: tuple[str, ...]) -> None:
    """Send a signal to running containers."""
    client = _client(host)
    _each(containers, _then_echo(lambda container: client.kill(container, sig)))


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running container.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def rm(host: str, force: bool, containers: tuple[str, ...]) -> None:
    """Remove containers."""
    client = _client(host)
    _each(containers, _then_echo(lambda container: client.remove(container, force)))


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def wait(host: str, containers: tuple[str, ...]) -> None:
    """Wait for containers to exit and print their exit statuses."""
    from cli.attach import exit_status

    client = _client(host)
    _each(containers, lambda container: click.echo(exit_status(client.wait(container))))


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def inspect(host: str, containers: tuple[str, ...]) -> None:
    """Print containers' details as JSON."""
    import json

    client = _client(host)
    found: list[object] = []
    try:
        _each(containers, lambda container: found.append(client.inspect(container)))
    finally:
        click.echo(json.dumps(found, indent=4))


@cli.command()
@click.option("-q", "--quiet", is_flag=True, help="Only print image IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.pass_obj
def images(host: str, quiet: bool, no_trunc: bool) -> None:
    """List images."""
    import time

    from cli import output

    listing = _client(host).images()
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]]
    ids: list[str] = []
    now = time.time()
    for image in listing:
        ident = image["Id"] if no_trunc else image["Id"].removeprefix("sha256:")[:12]
        if ident not in ids:
            ids.append(ident)
        created = image.get("Created")
        for reference in image.get("RepoTags") or ["<none>:<none>"]:
            repo, tag = _split_reference(reference)
            rows.append(
                [
                    repo,
                    tag or "<none>",
                    ident,
                    output.ago(created, now) if isinstance(created, int | float) else "",
                    output.size(image.get("Size") or 0),
                ]
            )
    if quiet:
        for ident in ids:
            click.echo(ident)
    else:
        click.echo(output.table(rows))


def _split_reference(reference: str) -> tuple[str, str]:
    """``REPOSITORY[:TAG]`` split in two; a colon before the last slash is a registry port."""
    colon = reference.rfind(":")
    if colon > reference.rfind("/"):
        return reference[:colon], reference[colon + 1 :]
    return reference, ""


@cli.command("import")
@click.argument("source", metavar="FILE|-")
@click.argument("reference", required=False, metavar="[REPOSITORY[:TAG]]")
@click.pass_obj
def import_(host: str, source: str, reference: str | None) -> None:
    """Create an image from a root filesystem tarball (- reads standard input)."""
    import stat

    repo, tag = _split_reference(reference or "")
    if source == "-":
        tar = sys.stdin.buffer
        length = None
    else:
        try:
            tar = open(source, "rb")  # noqa: SIM115 - closed below, after the upload
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise HyperError(f"open {source}: {reason}") from err
        st = os.fstat(tar.fileno())
        length = st.st_size if stat.S_ISREG(st.st_mode) else None
    try:
        result = _client(host).import_image(tar, length, repo, tag)
    finally:
        if tar is not sys.stdin.buffer:
            tar.close()
    click.echo(result["Id"])


@cli.command()
@click.argument("reference", metavar="NAME[:TAG|@DIGEST]")
@click.option("--platform", default="", metavar="OS/ARCH[/VARIANT]",
              help="Platform to pull from a multi-platform image.")
@click.pass_obj
def pull(host: str, reference: str, platform: str) -> None:
    """Pull an image from a registry."""
    result = _client(host).pull(reference, platform)
    click.echo(f"Digest: {result['Digest']}")
    click.echo(f"Status: {result.get('Status') or f'Downloaded newer image for {reference}'}")
    click.echo(reference)


@cli.command()
@click.pass_obj
def info(host: str) -> None:
    """Show system-wide information from hyperd."""
    from cli import output

    for line in output.tree(_client(host).info()):
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
    server = _client(host).version()
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


def main() -> NoReturn:
    """The ``hyper`` console script."""
    cli.main(prog_name="hyper")


if __name__ == "__main__":
    main()
