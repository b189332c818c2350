"""Image commands: pull, images, tag, rmi, inspect, history, prune, save, load, import, login, logout.

Each is a plain click command; ``cli.main`` puts them both at the top level (``hyper pull``)
and under ``hyper image`` (``hyper image pull``), as docker does.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import IO, TYPE_CHECKING, Any

import click

from cli.common import config_dir, connect, each, inspect_each, refuse_terminal, say, split_reference, write_archive
from cli.errors import HyperError

if TYPE_CHECKING:
    from cli.client import Client

IMAGE_HEADERS = {"ID": "IMAGE ID", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT"}
"""``table`` headers docker prints for these fields of ``hyper images --format``."""


def registry_auth(reference: str) -> dict[str, str] | None:
    """The saved login for the registry ``reference`` lives on, as X-Registry-Auth wants it."""
    from cli import config
    from hyperd.image.reference import registry_of

    host = registry_of(reference)
    login = config.lookup(config_dir(), host)
    if login is None:
        return None
    return {"username": login.username, "password": login.password, "serveraddress": host}


def pull_image(client: Client, reference: str, platform: str = "", out: IO[str] | None = None) -> None:
    """Pull ``reference``, showing docker's progress on ``out`` (nothing when None)."""
    from cli import progress

    with client.pull(reference, platform, registry_auth(reference)) as stream:
        if out is None:
            for _ in progress.messages(stream.lines()):
                pass
        else:
            progress.show(stream.lines(), out)


def with_default_tag(reference: str) -> str:
    """``busybox`` -> ``busybox:latest``, as docker names what it pulls; tags and digests stay."""
    if ":" in reference.rpartition("/")[2] or "@" in reference:
        return reference
    return f"{reference}:latest"


def _open_input(path: str) -> tuple[IO[bytes], int | None]:
    """A file to upload and its length (None for a pipe, sent chunked); ``-`` is standard input."""
    if path == "-":
        return sys.stdin.buffer, None
    try:
        source = open(path, "rb")  # noqa: SIM115 - the caller closes it after the upload
    except OSError as err:
        raise HyperError(f"open {path}: {(err.strerror or str(err)).lower()}") from err
    st = os.fstat(source.fileno())
    return source, st.st_size if stat.S_ISREG(st.st_mode) else None


@click.command()
@click.argument("reference", metavar="NAME[:TAG|@DIGEST]")
@click.option("--platform", default="", metavar="OS/ARCH[/VARIANT]",
              help="Platform to pull from a multi-platform image.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image's reference.")
@click.pass_obj
def pull(host: str, reference: str, platform: str, quiet: bool) -> None:
    """Pull an image from a registry."""
    tagged = with_default_tag(reference)
    if tagged != reference and not quiet:
        click.echo("Using default tag: latest")
    reference = tagged
    pull_image(connect(host), reference, platform, None if quiet else sys.stdout)
    click.echo(reference)


@click.command("images")
@click.argument("repository", required=False)
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all images (there are no intermediate ones).")
@click.option("-q", "--quiet", is_flag=True, help="Only print image IDs.")
@click.option("--digests", is_flag=True, help="Show digests.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="dangling=true|false",
              help="Filter the images (only dangling= is supported).")
@click.option("--format", "fmt", metavar="TEMPLATE", help="Go template, 'table TEMPLATE' or 'json'.")
@click.pass_obj
def images(host: str, repository: str | None, show_all: bool, quiet: bool, digests: bool, no_trunc: bool,
           filters: tuple[str, ...], fmt: str | None) -> None:
    """List images."""
    dangling: bool | None = None
    for item in filters:
        name, _, value = item.partition("=")
        if name != "dangling" or value not in ("true", "false"):
            raise HyperError(f"invalid filter {item!r}: only dangling=true|false is supported")
        dangling = value == "true"
    rows = _image_rows(connect(host).images(show_all, dangling), no_trunc)
    if repository is not None:
        rows = [row for row in rows if row["Repository"] == repository or f"{row['Repository']}:{row['Tag']}"
                == repository]
    if quiet:
        for ident in dict.fromkeys(row["ID"] for row in rows):
            click.echo(ident)
        return
    if fmt is None:
        fmt = "table {{.Repository}}\t{{.Tag}}\t" + ("{{.Digest}}\t" if digests else "") + \
            "{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    from cli import template

    for line in template.render(fmt, rows, IMAGE_HEADERS):
        click.echo(line)


def _image_rows(listing: list[dict[str, Any]], no_trunc: bool) -> list[dict[str, str]]:
    """One row per tag (``<none>`` for an untagged image), with docker's field names for templates."""
    import time

    from cli import output

    now = time.time()
    rows = []
    for image in listing:
        ident = image["Id"] if no_trunc else image["Id"].removeprefix("sha256:")[:12]
        created = image.get("Created")
        digests = {repo_digest.partition("@")[0]: repo_digest.partition("@")[2]
                   for repo_digest in image.get("RepoDigests") or ()}
        references = image.get("RepoTags") or ([f"{repo}:<none>" for repo in digests] or ["<none>:<none>"])
        for reference in references:
            repo, tag = split_reference(reference)
            rows.append({
                "Repository": repo, "Tag": tag or "<none>", "ID": ident,
                "Digest": digests.get(repo, "<none>"),
                "CreatedSince": output.ago(created, now) if isinstance(created, int | float) else "",
                "CreatedAt": local_time(created) if isinstance(created, int | float) else "",
                "Size": output.size(image.get("Size") or 0),
            })
    return rows


def local_time(timestamp: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(timestamp))


@click.command("import")
@click.argument("source", metavar="FILE|-")
@click.argument("reference", required=False, metavar="[REPOSITORY[:TAG]]")
@click.pass_obj
def import_(host: str, source: str, reference: str | None) -> None:
    """Create an image from a root filesystem tarball (- reads standard input)."""
    repo, tag = split_reference(reference or "")
    tar, length = _open_input(source)
    try:
        result = connect(host).import_image(tar, length, repo, tag)
    finally:
        if tar is not sys.stdin.buffer:
            tar.close()
    click.echo(result["Id"])


@click.command()
@click.argument("source", metavar="SOURCE_IMAGE[:TAG]")
@click.argument("target", metavar="TARGET_IMAGE[:TAG]")
@click.pass_obj
def tag(host: str, source: str, target: str) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    repo, tag_name = split_reference(target)
    connect(host).tag(source, repo, tag_name)


@click.command()
@click.option("-f", "--force", is_flag=True, help="Remove the image even if stopped containers use it.")
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
@click.pass_obj
def rmi(host: str, force: bool, names: tuple[str, ...]) -> None:
    """Remove images: untag them, and delete what no tag or container uses any more."""
    client = connect(host)

    def remove(name: str) -> None:
        for item in client.remove_image(name, force) or ():
            for key, value in item.items():
                click.echo(f"{key}: {value}")

    each(names, remove)


@click.command("inspect")
@click.option("-f", "--format", "fmt", metavar="TEMPLATE", help="Go template for each image.")
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
@click.pass_obj
def inspect(host: str, fmt: str | None, names: tuple[str, ...]) -> None:
    """Show images' details as JSON."""
    inspect_each(names, connect(host).image, fmt)


@click.command()
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option("-q", "--quiet", is_flag=True, help="Only print image IDs.")
@click.option("--format", "fmt", metavar="TEMPLATE", help="Go template, 'table TEMPLATE' or 'json'.")
@click.argument("name", metavar="IMAGE")
@click.pass_obj
def history(host: str, no_trunc: bool, quiet: bool, fmt: str | None, name: str) -> None:
    """Show the history of an image: one line per layer-making step, newest first."""
    import time

    from cli import output, template

    now = time.time()
    rows = []
    for step in connect(host).history(name):
        ident = str(step.get("Id") or "")
        created = step.get("Created")
        command = str(step.get("CreatedBy") or "")
        rows.append({
            "ID": ident if no_trunc or not ident.startswith("sha256:") else ident[7:19],
            "CreatedSince": output.ago(created, now) if isinstance(created, int | float) else "",
            "CreatedBy": command if no_trunc else output.ellipsis(command, 45),
            "Size": output.size(step.get("Size") or 0),
            "Comment": str(step.get("Comment") or ""),
        })
    if quiet:
        for row in rows:
            click.echo(row["ID"])
        return
    fmt = fmt or "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
    for line in template.render(fmt, rows, {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedBy": "CREATED BY"}):
        click.echo(line)


@click.command()
@click.option("-a", "--all", "prune_all", is_flag=True, help="Remove every image no container uses, "
                                                             "not only untagged ones.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def prune(host: str, prune_all: bool, force: bool) -> None:
    """Remove unused images: untagged ones, or with -a every image no container uses."""
    from cli import output

    if not force:
        what = "all images without at least one container associated to them" if prune_all \
            else "all dangling images"
        click.echo(f"WARNING! This will remove {what}.")
        if not click.confirm("Are you sure you want to continue?", default=False):
            return
    result = connect(host).prune_images(prune_all) or {}
    deleted = result.get("ImagesDeleted") or []
    if deleted:
        click.echo("Deleted Images:")
        for item in deleted:
            for key, value in item.items():
                click.echo(f"{key.lower()}: {value}")
        click.echo()
    click.echo(f"Total reclaimed space: {output.size(result.get('SpaceReclaimed') or 0)}")


@click.command()
@click.option("-o", "--output", "path", metavar="FILE", help="Write to FILE instead of standard output.")
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
@click.pass_obj
def save(host: str, path: str | None, names: tuple[str, ...]) -> None:
    """Save images to a tar archive (both a Docker archive and an OCI layout)."""
    refuse_terminal(path)
    with connect(host).save(list(names)) as stream:
        write_archive(stream, path)


@click.command()
@click.option("-i", "--input", "path", default="-", metavar="FILE", help="Read FILE instead of standard input.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output.")
@click.pass_obj
def load(host: str, path: str, quiet: bool) -> None:
    """Load images from a tar archive made by save (Docker archive or OCI layout)."""
    from cli import progress

    if path == "-" and sys.stdin.isatty():
        raise HyperError("requested load from stdin, but stdin is empty")
    tar, length = _open_input(path)
    try:
        with connect(host).load(tar, length) as stream:
            for message in progress.messages(stream.lines()):
                if not quiet and message.get("stream"):
                    click.echo(str(message["stream"]).rstrip("\n"))
    finally:
        if tar is not sys.stdin.buffer:
            tar.close()


@click.command()
@click.argument("server", required=False, metavar="[SERVER]")
@click.option("-u", "--username", metavar="USER", help="Username.")
@click.option("-p", "--password", metavar="PASSWORD", help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def login(host: str, server: str | None, username: str | None, password: str | None, password_stdin: bool) -> None:
    """Log in to a registry (Docker Hub when SERVER is not given)."""
    from cli import config

    server = server or config.DOCKER_HUB_KEY
    if password_stdin:
        if password is not None:
            raise HyperError("--password and --password-stdin are mutually exclusive")
        if not username:
            raise HyperError("must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    elif password is not None:
        say("WARNING! Using --password via the CLI is insecure. Use --password-stdin.")
    if username is None:
        if not sys.stdin.isatty():
            raise HyperError("cannot prompt for a username: standard input is not a terminal; use --username")
        username = click.prompt("Username")
    if password is None:
        if not sys.stdin.isatty():
            raise HyperError("cannot prompt for a password: standard input is not a terminal; use --password-stdin")
        password = click.prompt("Password", hide_input=True)
    if not username or not password:
        raise HyperError("username and password are required")
    connect(host).login(username, password, server)
    config.save(config_dir(), server, config.Login(username, password))
    click.echo("Login Succeeded")


@click.command()
@click.argument("server", required=False, metavar="[SERVER]")
def logout(server: str | None) -> None:
    """Forget the saved login for a registry (Docker Hub when SERVER is not given)."""
    from cli import config

    server = server or config.DOCKER_HUB_KEY
    if config.forget(config_dir(), server):
        click.echo(f"Removing login credentials for {config.key(server)}")
    else:
        click.echo(f"Not logged in to {config.key(server)}")


TOP_LEVEL = (pull, images, import_, tag, rmi, history, save, load, login, logout)
"""Commands docker has at the top level; ``image`` holds the image ones again under their short names."""
IMAGE_GROUP = {"pull": pull, "ls": images, "import": import_, "tag": tag, "rm": rmi, "inspect": inspect,
               "history": history, "prune": prune, "save": save, "load": load}
