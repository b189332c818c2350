"""``hyperd``: serve the API until SIGTERM/SIGINT, then stop every pod cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import click

from hyperd import __version__
from hyperd.config import DEFAULT_CONFIG_FILE, DEFAULT_HOST, DEFAULT_ROOT, Config
from hyperd.errors import HyperError

log = logging.getLogger("hyperd")


def _lock(root: Path) -> int:
    """Hold ROOT/hyperd.lock for the daemon's life: one daemon per root."""
    fd = os.open(root / "hyperd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise HyperError(f"another hyperd (pid {owner}) is already using {root}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _claim_socket(path: Path) -> None:
    """Remove a stale socket file; refuse one that a live daemon (of any root) answers on."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except FileNotFoundError:
        return
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise HyperError(f"another daemon is already serving unix://{path}: choose another --host")


async def serve(config: Config) -> None:
    # Imported here so that `hyperd --help` and lock errors stay fast.
    from aiohttp import web

    from hyperd.api import application
    from hyperd.daemon import Daemon
    from hyperd.image.store import ImageStore
    from hyperd.vm.qemu import Qemu

    config.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _claim_socket(config.socket)
    hypervisor = await Qemu.detect(config.kernel, config.guest_disk, config.cache)
    if hypervisor.accel.name == "tcg":
        log.warning("using TCG (software emulation), not KVM: %s", hypervisor.accel.reason)
    if hypervisor.cgroups is not None and not hypervisor.cgroups.bases:
        log.warning("VMs run without host cgroup limits: %s", hypervisor.cgroups.reason)
    daemon = Daemon(config, hypervisor, ImageStore(config.root))
    daemon.recover()
    if hypervisor.cgroups is not None:
        hypervisor.cgroups.reclaim()  # the host cgroups of a crashed hyperd's VMs, once, not at every launch
    await daemon.networks.reclaim()
    daemon.resume()
    # handler_cancellation: a client that goes away ends its attach or logs stream.
    runner = web.AppRunner(application(daemon), access_log=None, handle_signals=False, handler_cancellation=True,
                           shutdown_timeout=5)
    await runner.setup()
    old_umask = os.umask(0o177)
    try:
        site = web.UnixSite(runner, str(config.socket))
        await site.start()
    finally:
        os.umask(old_umask)
    log.info("hyperd %s listening on unix://%s (root %s)", __version__, config.socket, config.root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping: shutting down %d pod(s)", len(daemon.pods))
    finally:
        # Pods first: their containers' streams end, so the API's handlers can finish.
        await daemon.shutdown()
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            config.socket.unlink()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-H", "--host", default=DEFAULT_HOST, show_default=True, help="Socket to serve, unix:///path.")
@click.option("--root", type=click.Path(path_type=Path), default=DEFAULT_ROOT, show_default=True,
              help="Where images, containers and state live.")
@click.option("--kernel", type=click.Path(path_type=Path), help="Guest kernel (default $HYPER_KERNEL).")
@click.option("--guest", type=click.Path(path_type=Path), help="Guest root disk (default $HYPER_GUEST).")
@click.option("--config-file", type=click.Path(path_type=Path),
              help=f"Settings in JSON (default {DEFAULT_CONFIG_FILE} if it exists).")
@click.option("--registry-mirror", "mirrors", multiple=True, metavar="URL",
              help="A Docker Hub mirror, tried before Docker Hub (repeatable).")
@click.option("--insecure-registry", "insecure", multiple=True, metavar="HOST[:PORT]|CIDR",
              help="A registry that may be reached over plain HTTP (repeatable).")
@click.option("--max-concurrent-downloads", "downloads", type=int, help="Layers downloaded at once per pull.")
@click.option("--bip", metavar="CIDR", help="The default bridge network's gateway address and subnet "
              "(default 172.31.0.1/16).")
@click.option("--bridge", type=click.Choice(["none"]), help="'none': no default bridge network.")
@click.option("--debug", is_flag=True, help="Log debug messages.")
@click.version_option(__version__, prog_name="hyperd")
def main(host: str, root: Path, kernel: Path | None, guest: Path | None, config_file: Path | None,
         mirrors: tuple[str, ...], insecure: tuple[str, ...], downloads: int | None, bip: str | None,
         bridge: str | None, debug: bool) -> None:
    """The hyper daemon: runs every pod in its own micro-VM."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="hyperd: %(message)s",
                        stream=sys.stderr)
    if os.geteuid() != 0:
        sys.exit("hyperd: must run as root (it boots VMs and builds root filesystems)")
    try:
        config = Config.create(host, root, kernel, guest, config_file=config_file, registry_mirrors=mirrors,
                               insecure_registries=insecure, max_concurrent_downloads=downloads, bip=bip,
                               bridge=bridge)
        config.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = _lock(config.root)
        try:
            asyncio.run(serve(config))
        finally:
            os.close(lock)
    except HyperError as err:
        if debug:
            raise
        sys.exit(f"hyperd: {err}")
