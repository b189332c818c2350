"""Containers inside the guest: a root filesystem stacked from an image disk, and a
process tree in its own mount, PID, UTS and IPC namespaces.

Each container's PID 1 is a small reaper forked from the agent (as ``docker run
--init`` does with tini): it forwards signals to the container's main process, reaps
orphans and exits with the main process's status.  The main process is therefore
killable from inside (``kill -9 $$`` ends it with 137, as users expect) and zombies
never pile up, whatever the image's entrypoint does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import stat
import struct

from hyperstart import cgroup, seccomp, syscalls
from hyperstart.protocol import exit_status

TYPE_CHECKING = False
if TYPE_CHECKING:  # the guest pays for every import: typing only for the checker
    from collections.abc import Callable
    from typing import NoReturn

RUN = "/run/hyper"
TOOL = "/bin/busybox"
"""The agent's busybox: tar for ``export`` and ``cp``."""
TIOCSCTTY = 0x540E
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
MASKED = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
"""Hidden from a container unless it is privileged, as docker hides them."""
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
NAMING_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")
"""The files hyperd writes for each container (docker's), bind-mounted over the image's."""
FORWARDED = sorted(
    set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}, key=int,
)


class StartError(Exception):
    """A container process could not be started; ``code`` is docker's exit code for it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProcessSpec:
    """What to run: argv, environment, working directory and ``user[:group]``."""

    __slots__ = ("args", "capabilities", "cwd", "env", "no_new_privileges", "rlimits", "seccomp", "tool", "user")

    def __init__(self, args: list[str], env: list[str], cwd: str = "/", user: str = "",
                 rlimits: list[tuple[int, int, int]] | None = None, capabilities: list[int] | None = None,
                 no_new_privileges: bool = False, seccomp: bytes | None = None,
                 tool: bool = False) -> None:
        self.args = args
        self.tool = tool
        """args[0] is an applet of the agent's own busybox (``hyper cp``'s tar): the container may have none."""
        self.env = env
        self.cwd = cwd
        self.user = user
        self.rlimits = rlimits or []
        """(resource, soft, hard): set before the user is, so that hard limits may rise."""
        self.capabilities = capabilities
        """The capabilities kept in the bounding set (all others dropped); None keeps them all."""
        self.no_new_privileges = no_new_privileges
        self.seccomp = seccomp
        """The seccomp filter's BPF program; None for no filter."""


class Container:
    """A container's assembled root and, once started, the pid of its PID 1."""

    def __init__(self, container_id: str, root: str, hostname: str, mounts: list[str]) -> None:
        self.id = container_id
        self.root = root
        self.hostname = hostname
        self.mounts = mounts
        self.files: list[tuple[str, str, bool]] = []
        """(path in the container, staged file in the VM, read-only) to bind over the image's."""
        self.cgroup = ""
        self.privileged = False
        self.read_only = False
        self.tmpfs: dict[str, str] = {}
        """Path in the container -> tmpfs mount options."""
        self.devices: list[tuple[str, str]] = []
        """(disk serial, path in the container's /dev) of the host devices given with --device."""
        self.shared: Shared | None = None
        """The PID and IPC namespaces of its pod, when the pod's containers share them."""
        self.volumes: list[tuple[str, str, bool]] = []
        """(path in the container, its mount in the VM, read-only) of its volumes and bind mounts."""
        self.upper = ""
        """The overlay's upper directory: the container's changes to its image."""
        self.lower: list[str] = []
        """The overlay's lower directories, top first: the image."""
        self.pid = 0


class Shared:
    """The PID and IPC namespaces a pod's containers share, held by a process of their own: PID 1
    of the shared PID namespace (as a pause container is), which reaps every container's orphans."""

    def __init__(self, pid: bool, ipc: bool) -> None:
        ready, told = os.pipe2(os.O_CLOEXEC)
        self.holder = _fork_into(lambda: syscalls.unshare(syscalls.CLONE_NEWPID) if pid else None)
        if self.holder == 0:
            _hold(told, ipc)
        os.close(told)
        try:
            os.read(ready, 1)  # its namespaces are made
        finally:
            os.close(ready)
        self.pid_fd = os.open(f"/proc/{self.holder}/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if pid else -1
        self.ipc_fd = os.open(f"/proc/{self.holder}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC) if ipc else -1


def _hold(told: int, ipc: bool) -> NoReturn:
    try:
        signal.set_wakeup_fd(-1)
        for number in FORWARDED:
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # so that pause() wakes to reap
        if ipc:
            syscalls.unshare(syscalls.CLONE_NEWIPC)
        os.write(told, b".")
        os.closerange(0, os.sysconf("SC_OPEN_MAX"))
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                signal.pause()
    finally:
        os._exit(255)


def disk_by_serial(serial: str) -> str:
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/serial") as f:
                if f.read().strip() == serial:
                    return f"/dev/{name}"
        except FileNotFoundError:
            continue
    raise StartError(125, f"no disk with serial {serial!r} is attached to the VM")


class Images:
    """Read-only image disks, each mounted once and shared by every container using it."""

    def __init__(self) -> None:
        self._mounted: dict[str, str] = {}

    def mount(self, serial: str, fstype: str) -> str:
        if serial not in self._mounted:
            target = f"{RUN}/images/{serial}"
            os.makedirs(target, exist_ok=True)
            syscalls.mount(disk_by_serial(serial), target, fstype, syscalls.MS_RDONLY)
            self._mounted[serial] = target
        return self._mounted[serial]


def assemble(container_id: str, lower: str, disk: tuple[str, str] | None = None) -> Container:
    """Stack a writable upper layer over the image: the container's root.

    The upper layer is on the VM's tmpfs, or on the container's own disk (serial, fstype)
    when it has one, where it is kept from one run of the container to the next.
    """
    base = f"{RUN}/containers/{container_id}"
    mounts = []
    if disk is not None:
        layer = f"{base}/layer"
        os.makedirs(layer, exist_ok=True)
        # noinit_itable: hyperd made the filesystem with lazy inode tables, and zeroing them in the
        # background would cost the guest CPU and the host's sparse file its holes.
        syscalls.mount(disk_by_serial(disk[0]), layer, disk[1], syscalls.MS_NOSUID | syscalls.MS_NODEV,
                       "noinit_itable" if disk[1] == "ext4" else None)
        mounts.append(layer)
    else:
        layer = base
    for sub in (f"{layer}/upper", f"{layer}/work", f"{base}/root"):
        os.makedirs(sub, exist_ok=True)
    root = f"{base}/root"
    syscalls.mount("overlay", root, "overlay", 0, f"lowerdir={lower},upperdir={layer}/upper,workdir={layer}/work")
    mounts.append(root)
    for sub in ("proc", "sys", "dev"):
        os.makedirs(f"{root}/{sub}", exist_ok=True)
    # The container's devpts instance, made here so that the agent can open terminals in it
    # (ptmx) for the container's processes; the container sees it as its /dev/pts.
    pts = f"{base}/pts"
    os.makedirs(pts, exist_ok=True)
    syscalls.mount("devpts", pts, "devpts", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=0620")
    mounts.append(pts)
    box = Container(container_id, root, container_id[:12], mounts)
    box.upper, box.lower = f"{layer}/upper", lower.split(":")
    return box


def open_terminal(container: Container) -> tuple[int, int]:
    """A pty (master, slave) in the container's own devpts, so its name resolves inside the container."""
    master = os.open(f"{RUN}/containers/{container.id}/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        os.close(master)
        raise
    return master, slave


def stage_files(container: Container, files: dict[str, str], inject: list[dict[str, object]]) -> None:
    """Write hyperd's /etc/hosts, resolv.conf and hostname for the container, and the files a pod
    spec injects (read-only), to be bound in at its start."""
    staged = f"{RUN}/containers/{container.id}/files"
    os.makedirs(staged, exist_ok=True)
    for path, content in files.items():
        if path not in NAMING_FILES:
            raise StartError(125, f"hyperd may not provide {path!r} (only {', '.join(NAMING_FILES)})")
        source = f"{staged}/{os.path.basename(path)}"
        with open(source, "w") as f:
            f.write(str(content))
        container.files.append((path, source, False))
    for index, entry in enumerate(inject):
        path = str(entry["path"])
        if not path.startswith("/") or "\0" in path:
            raise StartError(125, f"invalid path {path!r} for an injected file")
        source = f"{staged}/injected-{index}"
        with open(source, "w") as f:
            f.write(str(entry["content"]))
        os.chmod(source, int(str(entry.get("mode", 0o644))) & 0o777)
        container.files.append((path, source, True))


def _attach(detached: list[tuple[str, int, bool]], directories: bool) -> None:
    """Attach detached mounts (volumes, or staged files over the image's) once inside the
    container's root, so that a path the image made a symlink resolves within the container,
    never into the VM."""
    for path, fd, readonly in detached:
        if directories:
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        syscalls.move_mount(fd, path)
        os.close(fd)
        if readonly:
            syscalls.mount("", path, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY)


def release(container: Container) -> None:
    for target in reversed(container.mounts):
        with contextlib.suppress(OSError):
            syscalls.umount(target, syscalls.MNT_DETACH)


def device_numbers(serial: str) -> tuple[int, int]:
    """The major and minor numbers of the disk with virtio-blk ``serial``."""
    with open(f"/sys/block/{disk_by_serial(serial).removeprefix('/dev/')}/dev") as f:
        major, minor = (int(n) for n in f.read().split(":"))
    return major, minor


def _populate_dev(root: str, pts: str, devices: list[tuple[str, str]]) -> None:
    dev = f"{root}/dev"
    syscalls.mount("tmpfs", dev, "tmpfs", syscalls.MS_NOSUID, "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)
    for serial, path in devices:
        # A --device: the disk the host attached for it, as a block node at the path asked for.
        node = f"{root}/{path.lstrip('/')}"
        os.makedirs(os.path.dirname(node), exist_ok=True)
        os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(*device_numbers(serial)))
    os.mkdir(f"{dev}/pts")
    syscalls.mount(pts, f"{dev}/pts", None, syscalls.MS_BIND)
    os.mkdir(f"{dev}/shm")
    syscalls.mount("shm", f"{dev}/shm", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
                   "mode=1777,size=65536k")
    os.mkdir(f"{dev}/mqueue")
    syscalls.mount("mqueue", f"{dev}/mqueue", "mqueue", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    for link, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{link}")


def _enter_root(container: Container) -> None:
    """In the container's fresh mount namespace: its /proc, /sys, /dev, then pivot_root, then its files."""
    root = container.root
    detached = [(path, syscalls.open_tree(source), readonly) for path, source, readonly in container.files]
    # Parents first, so that a volume inside another one lands on it, not under it.
    volumes = [(path, syscalls.open_tree(source), readonly) for path, source, readonly
               in sorted(container.volumes, key=lambda volume: volume[0].rstrip("/").count("/"))]
    syscalls.mount("", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount(root, root, None, syscalls.MS_BIND | syscalls.MS_REC)
    plain = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    syscalls.mount("proc", f"{root}/proc", "proc", plain)
    syscalls.mount("sysfs", f"{root}/sys", "sysfs", plain | syscalls.MS_RDONLY)
    syscalls.mount("cgroup2", f"{root}/sys/fs/cgroup", "cgroup2",
                   plain if container.privileged else plain | syscalls.MS_RDONLY)
    _populate_dev(root, f"{RUN}/containers/{container.id}/pts", container.devices)
    os.chdir(root)
    syscalls.pivot_root(".", ".")
    syscalls.umount(".", syscalls.MNT_DETACH)
    os.chdir("/")
    _attach(volumes, directories=True)
    _attach(detached, directories=False)


def _lookup(path: str, name: str, field_index: int) -> tuple[str, ...] | None:
    try:
        with open(path) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) > field_index and fields[0] == name:
                    return tuple(fields)
    except OSError:
        pass
    return None


def resolve_user(spec: str) -> tuple[int, int, str]:
    """uid, gid and home for ``user[:group]`` (names or numbers), read from the container's files."""
    user, _, group = spec.partition(":")
    uid, gid, home = 0, 0, "/"
    if user:
        entry = _lookup("/etc/passwd", user, 5)
        if entry:
            uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
        elif user.isdigit():
            uid = int(user)
            gid = uid if not group else 0
        else:
            raise StartError(125, f"unable to find user {user}: no matching entries in passwd file")
    elif not group:
        entry = _lookup("/etc/passwd", "root", 5)
        home = entry[5] if entry else "/root"
    if group:
        entry = _lookup("/etc/group", group, 2)
        if entry:
            gid = int(entry[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise StartError(125, f"unable to find group {group}: no matching entries in group file")
    return uid, gid, home


def _find_executable(name: str, env: dict[str, str]) -> str:
    if "/" in name:
        return name
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise StartError(127, f'exec: "{name}": executable file not found in $PATH')


def _exec(spec: ProcessSpec, tool: int = -1) -> None:
    """Become the container's main process (or, given ``tool``, a descriptor on the agent's
    busybox, run that); never returns."""
    env = dict(item.partition("=")[::2] for item in spec.env)
    uid, gid, home = resolve_user(spec.user)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", home)
    cwd = spec.cwd or "/"
    os.makedirs(cwd, exist_ok=True)
    for resource, soft, hard in spec.rlimits:
        syscalls.setrlimit(resource, soft, hard)
    if spec.capabilities is not None:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for capability in set(range(last + 1)) - set(spec.capabilities):
            syscalls.prctl(PR_CAPBSET_DROP, capability)
    if spec.no_new_privileges:
        syscalls.prctl(PR_SET_NO_NEW_PRIVS, 1)
    if spec.seccomp is not None:
        seccomp.install(spec.seccomp)  # while root still has CAP_SYS_ADMIN to install it
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.chdir(cwd)
    except OSError as err:
        raise StartError(126, f"chdir to cwd ({cwd!r}) set in config: {err.strerror}") from err
    if not spec.args:
        raise StartError(125, "no command specified")
    path: str | int = tool if tool >= 0 else _find_executable(spec.args[0], env)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execve(path, spec.args, env)
    except OSError as err:
        code = 127 if err.errno == errno.ENOENT else 126
        raise StartError(code, f'exec: "{spec.args[0]}": {(err.strerror or str(err)).lower()}') from err


def _reap(main: int) -> None:
    """The container's PID 1: forward signals to the main process, reap, exit with its status."""
    for sig in FORWARDED:
        signal.signal(sig, lambda number, _frame: os.kill(main, number))
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == main:
            os._exit(exit_status(status))


def spawn(container: Container, spec: ProcessSpec, stdio: list[int], errors: int, tty: bool = False,
          sysctls: dict[str, str] | None = None) -> int:
    """Fork the container's PID 1 (the reaper) and its main process.

    ``stdio`` are the descriptors for the main process's 0, 1, 2 (with ``tty``, a terminal
    that becomes its controlling one); ``errors`` is the write end of a close-on-exec pipe
    on which a failed start writes one JSON line.  Returns the reaper's pid (as seen by the
    agent).
    """
    shared = container.shared
    if shared is not None and shared.pid_fd >= 0:
        pid = _fork_into(lambda: syscalls.setns(shared.pid_fd, syscalls.CLONE_NEWPID))
    else:
        pid = _fork_into(lambda: syscalls.unshare(syscalls.CLONE_NEWPID))
    if pid:
        return pid
    # The child: PID 1 of a new PID namespace.  Nothing here may return to the agent.
    _child(container, errors, "container", lambda: _reaper(container, spec, stdio, tty, sysctls))


def _reaper(container: Container, spec: ProcessSpec, stdio: list[int], tty: bool,
            sysctls: dict[str, str] | None) -> None:
    """The container's PID 1: its namespaces and root, its command forked, then reaping."""
    shared = container.shared
    # Opened before entering: inside, /bin/busybox is the container's, if it has one at all.
    tool = os.open(TOOL, os.O_RDONLY | os.O_CLOEXEC) if spec.tool else -1
    # A cgroup namespace rooted at the container's cgroup (joined already), as docker's default
    # on cgroup v2: the container sees its own limits at /sys/fs/cgroup, and itself at "/".
    own = syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWCGROUP
    if shared is not None and shared.ipc_fd >= 0:
        syscalls.unshare(own)
        syscalls.setns(shared.ipc_fd, syscalls.CLONE_NEWIPC)
    else:
        syscalls.unshare(own | syscalls.CLONE_NEWIPC)
    _enter_root(container)
    socket.sethostname(container.hostname)
    for key, value in (sysctls or {}).items():
        # The container's IPC namespace (or the pod's network one): checked by hyperd, named by dots.
        with open("/proc/sys/" + key.replace(".", "/"), "w") as setting:
            setting.write(value)
    _confine(container)
    main = os.fork()
    if main == 0:
        _take_stdio(stdio, tty)
        _exec(spec, tool)
    null = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    _reap(main)


def _fork_into(enter_namespace: Callable[[], None]) -> int:
    """Fork a child into the PID namespace ``enter_namespace`` switches to (a PID namespace
    change applies to the next child only); the agent itself stays in its own."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    pid = -1
    try:
        enter_namespace()
        pid = os.fork()
    finally:
        if pid != 0:
            syscalls.setns(own, syscalls.CLONE_NEWPID)
        os.close(own)
    return pid


def _child(container: Container, errors: int, what: str, body: Callable[[], None]) -> NoReturn:
    """A forked process of the container: out of the agent's signal plumbing, into the container's
    cgroup, then ``body``, which never returns; a failure is reported on ``errors`` as its exit."""
    try:
        signal.set_wakeup_fd(-1)
        if container.cgroup:
            cgroup.join(container.cgroup)
        body()
    except StartError as err:
        _report(errors, err.code, str(err))
    except BaseException as err:
        _report(errors, 125, f"{what} setup failed: {err}")
    os._exit(255)


def enter(container: Container, spec: ProcessSpec, stdio: list[int], errors: int, tty: bool = False) -> int:
    """Fork a process into a running container's PID, mount, UTS, IPC and cgroup namespaces (``exec``);
    it is the agent's child, so the agent reaps it and reports its exit.  Returns its pid."""
    names = (("pid", syscalls.CLONE_NEWPID), ("mnt", syscalls.CLONE_NEWNS), ("uts", syscalls.CLONE_NEWUTS),
             ("ipc", syscalls.CLONE_NEWIPC), ("cgroup", syscalls.CLONE_NEWCGROUP))
    namespaces = [(os.open(f"/proc/{container.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), flag)
                  for name, flag in names]
    # Opened before entering: inside, /bin/busybox is the container's, if it has one at all.
    tool = os.open(TOOL, os.O_RDONLY | os.O_CLOEXEC) if spec.tool else -1
    pid = -1
    try:
        pid = _fork_into(lambda: syscalls.setns(namespaces[0][0], syscalls.CLONE_NEWPID))
    finally:
        if pid != 0:  # the agent's side (the child needs them for its setns)
            for fd, _ in namespaces:
                os.close(fd)
            if tool >= 0:
                os.close(tool)
    if pid:
        return pid

    def join_and_exec() -> None:
        for fd, flag in namespaces[1:]:
            syscalls.setns(fd, flag)  # the mount namespace's root is the container's: we are inside it
        os.chdir("/")
        _take_stdio(stdio, tty)
        _exec(spec, tool)

    _child(container, errors, "exec", join_and_exec)


def _confine(container: Container) -> None:
    """Inside the container's root: docker's masked and read-only paths (unless privileged), its
    tmpfs mounts, and a read-only root filesystem if asked."""
    if not container.privileged:
        for path in MASKED:
            if os.path.isdir(path):
                syscalls.mount("tmpfs", path, "tmpfs", syscalls.MS_RDONLY, "size=0")
            elif os.path.exists(path):
                syscalls.mount("/dev/null", path, None, syscalls.MS_BIND)
        for path in READ_ONLY:
            if os.path.exists(path):
                syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REC)
                syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
    for path, options in container.tmpfs.items():
        flags, data = _tmpfs_options(options)
        os.makedirs(path, exist_ok=True)
        syscalls.mount("tmpfs", path, "tmpfs", flags, data)
    if container.read_only:
        syscalls.mount("", "/", None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY)


def _tmpfs_options(options: str) -> tuple[int, str]:
    """docker's ``--tmpfs`` options: mount flags (ro, noexec, nosuid, nodev...) and tmpfs data (size=...)."""
    setting = {"ro": syscalls.MS_RDONLY, "nosuid": syscalls.MS_NOSUID, "nodev": syscalls.MS_NODEV,
               "noexec": syscalls.MS_NOEXEC}
    clearing = {"rw": syscalls.MS_RDONLY, "suid": syscalls.MS_NOSUID, "dev": syscalls.MS_NODEV,
                "exec": syscalls.MS_NOEXEC}
    flags = syscalls.MS_NOSUID | syscalls.MS_NODEV  # docker's defaults for a --tmpfs
    data = []
    for option in filter(None, options.split(",")):
        if option in setting:
            flags |= setting[option]
        elif option in clearing:
            flags &= ~clearing[option]
        else:
            data.append(option)
    return flags, ",".join(data)


def _take_stdio(stdio: list[int], tty: bool) -> None:
    for target, source in enumerate(stdio):
        os.dup2(source, target, inheritable=True)
    if tty:
        os.setsid()
        fcntl.ioctl(0, TIOCSCTTY, 0)


def _report(errors: int, code: int, message: str) -> None:
    try:
        os.write(errors, json.dumps({"code": code, "message": message[:2000]}).encode())
    finally:
        os._exit(code)
