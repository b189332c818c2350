"""``hyper cp``, ``hyper diff`` and ``hyper commit``: a container's files and changes, running or stopped.

cp follows docker's rules for naming: into an existing directory a source keeps its name,
otherwise it takes the destination's; ``SRC/.`` copies a directory's content.  Unpacking on
the host is done as safely as a layer is (``hyperd.image.layers.extract``): the container is
not trusted, so nothing of its archive lands outside the destination.  In the container,
hyperd runs the agent's tar inside the container's own root, where its symlinks cannot lead
out either.
"""

from __future__ import annotations

import os
import posixpath
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.common import connect, split_reference
from cli.errors import HyperError

if TYPE_CHECKING:
    import tarfile

    from cli.client import Client

GO_DIR = 1 << 31
"""The directory bit of a path stat's mode (Go's os.FileMode, as docker reports it)."""


def split_target(argument: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` as (container, path); a local path (None, path).  As docker reads it, a
    colon after a slash, or a leading ``.``/``/``, makes a local path."""
    if argument.startswith(("/", ".")) or ":" not in argument:
        return None, argument
    container, _, path = argument.partition(":")
    if "/" in container:
        return None, argument
    return container, path


@click.command()
@click.option("-a", "--archive", is_flag=True, help="Keep uid and gid of what is copied into the container.")
@click.option("-L", "--follow-link", is_flag=True, help="Copy what a symlink source points to.")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DEST")
@click.pass_obj
def cp(host: str, archive: bool, follow_link: bool, source: str, destination: str) -> None:
    """Copy files between a running container and the host (- is a tar on stdin or stdout).

    \b
    hyper cp CONTAINER:SRC_PATH DEST_PATH|-
    hyper cp SRC_PATH|- CONTAINER:DEST_PATH
    """
    src_container, src_path = split_target(source)
    dst_container, dst_path = split_target(destination)
    if (src_container is None) == (dst_container is None):
        raise HyperError("copying between containers or between two host paths is not supported: "
                         "one of SRC and DEST must be CONTAINER:PATH")
    client = connect(host)
    if src_container is not None:
        _from_container(client, src_container, src_path, dst_path, follow_link)
    else:
        assert dst_container is not None
        _to_container(client, src_path, dst_container, dst_path, archive, follow_link)


def _from_container(client: Client, container: str, path: str, destination: str, follow: bool) -> None:
    from hyperd.image import InvalidLayer
    from hyperd.image.layers import extract

    if follow:
        stat = client.path_stat(container, path, follow=False)
        if stat is not None and stat["linkTarget"]:
            path = posixpath.join(posixpath.dirname(path.rstrip("/")) or "/", stat["linkTarget"])
    contents = path.endswith(("/.", "/./")) or path in (".", "./")
    name = posixpath.basename(posixpath.normpath("/" + path)) or "."
    stat, stream = client.archive(container, path)
    with stream:
        if destination == "-":
            while chunk := stream.read(1 << 20):
                sys.stdout.buffer.write(chunk)
            return
        is_dir = stat["mode"] & GO_DIR != 0
        target, rename = _host_target(Path(destination), name, is_dir, contents, path)
        try:
            extract(stream, target, rename)  # type: ignore[arg-type]  # a readable stream is all it needs
        except InvalidLayer as err:
            raise HyperError(f"the container's archive was refused: {err}") from err
        except OSError as err:
            raise HyperError(f"cannot write into {target}: {(err.strerror or str(err)).lower()}") from err


def _host_target(destination: Path, name: str, is_dir: bool, contents: bool,
                 source: str) -> tuple[Path, tuple[str, str] | None]:
    """Where on the host the archive's top-level ``name`` goes: (directory to unpack into, rename)."""
    if destination.is_dir():
        return destination, (name, ".") if contents else None
    if str(destination).endswith("/") and not is_dir:
        raise HyperError(f"destination directory {destination} does not exist")
    if destination.exists() and is_dir:
        raise HyperError(f"cannot copy directory {source} onto the file {destination}")
    parent = destination.parent
    if not parent.is_dir():
        raise HyperError(f"no such directory: {parent}")
    if contents:
        destination.mkdir()
        return destination, (name, ".")
    return parent, (name, destination.name)


def _to_container(client: Client, source: str, container: str, path: str, keep_owner: bool, follow: bool) -> None:
    import threading

    if source == "-":
        client.extract(container, path, sys.stdin.buffer)
        return
    local = Path(source)
    if not local.exists() and not local.is_symlink():
        raise HyperError(f"no such file or directory: {source}")
    if follow:
        local = local.resolve()
    contents = source.endswith(("/.", "/./"))
    stat = client.path_stat(container, path, follow=True)
    if stat is not None and stat["mode"] & GO_DIR:
        directory, name = path, "." if contents else local.name
    elif stat is not None and local.is_dir():
        raise HyperError(f"cannot copy directory {source} onto the file {path} in the container")
    elif path.endswith("/") and stat is None:
        if not local.is_dir():
            raise HyperError(f"destination directory {path} does not exist in the container")
        directory, name = posixpath.dirname(path.rstrip("/")) or "/", posixpath.basename(path.rstrip("/"))
    else:
        directory, name = posixpath.dirname(path) or "/", posixpath.basename(path)
    reader, writer = os.pipe()
    failure: list[BaseException] = []
    packer = threading.Thread(target=_pack, args=(local, name, keep_owner, writer, failure), daemon=True)
    packer.start()
    with os.fdopen(reader, "rb") as body:
        try:
            client.extract(container, directory, body)
        finally:
            # Unblock the packer if the daemon stopped reading early.
            while body.read(1 << 20):
                pass
            packer.join()
    if failure:
        raise HyperError(f"cannot read {source}: {failure[0]}")


def _pack(local: Path, name: str, keep_owner: bool, fd: int, failure: list[BaseException]) -> None:
    """Write ``local`` as a tar under ``name`` to ``fd`` (owned by root unless ``keep_owner``, as docker does)."""
    import tarfile

    def owner(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uname = member.gname = ""
        if not keep_owner:
            member.uid = member.gid = 0
        return member

    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(local, arcname=name, filter=owner)
    except (OSError, tarfile.TarError) as err:
        failure.append(err)


@click.command()
@click.argument("container")
@click.pass_obj
def diff(host: str, container: str) -> None:
    """Show the files a running container has added (A), changed (C) or deleted (D) in its image."""
    for change in connect(host).changes(container):
        click.echo(f"{'CAD'[change['Kind']]} {change['Path']}")


@click.command()
@click.option("-a", "--author", default="", help='Author (e.g. "Jane Doe <jane@example.com>").')
@click.option("-c", "--change", "changes", multiple=True, metavar="INSTRUCTION",
              help="A Dockerfile instruction for the image's config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, "
                   "STOPSIGNAL, USER, WORKDIR).")
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("-p", "--pause/--no-pause", default=True, help="Freeze the container while its changes are read.")
@click.argument("container")
@click.argument("reference", required=False, metavar="[REPOSITORY[:TAG]]")
@click.pass_obj
def commit(host: str, author: str, changes: tuple[str, ...], message: str, pause: bool, container: str,
           reference: str | None) -> None:
    """Create a new image from a running container's changes."""
    repo, tag = split_reference(reference or "")
    click.echo(connect(host).commit(container, repo, tag, message, author, list(changes), pause)["Id"])
