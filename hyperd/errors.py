"""The daemon's exceptions.

Every error hyperd raises on purpose derives from ``HyperError``; the API layer maps
each class to one HTTP status (``hyperd.api.STATUS``) and its message to the one line
the CLI prints.  The tree::

    HyperError
    ├── InvalidArgument        a request that can never succeed as written (400)
    ├── NotFound               no such container, image, ...           (404)
    ├── Conflict               a name in use, removing a running one    (409)
    │   └── StateError         an operation the object's state forbids
    ├── StartFailed            the container's command could not run (exit code 126/127)
    ├── StorageError           hyperd could not write its state (a full disk, say) (500)
    └── VMError                the hypervisor or guest failed           (500)
        ├── HypervisorMissing  QEMU or the guest kernel/disk is not installed
        ├── BootFailed         the guest did not come up; carries the console tail
        └── GuestError         the agent broke the protocol or answered with an error

Image errors live in ``hyperd.image`` and are translated at the API layer too.
"""

from __future__ import annotations


class HyperError(Exception):
    """Root of hyperd's errors; ``str(err)`` is the line a user sees."""


class InvalidArgument(HyperError):
    pass


class NotFound(HyperError):
    pass


class Conflict(HyperError):
    pass


class StateError(Conflict):
    pass


class StartFailed(HyperError):
    """The container's process could not be started; ``exit_code`` follows docker (126, 127)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StorageError(HyperError):
    """hyperd could not record its state on disk."""


class VMError(HyperError):
    pass


class HypervisorMissing(VMError):
    pass


class BootFailed(VMError):
    """The guest did not reach a ready agent; ``console`` holds the last lines of the guest
    console (or of QEMU's own log when QEMU failed before the guest ran)."""

    def __init__(self, message: str, console: list[str], argv: list[str] | None = None) -> None:
        tail = "\n".join(console)
        super().__init__(f"{message}\n--- its last {len(console)} lines of output ---\n{tail}"
                         if console else message)
        self.console = console
        self.argv = argv or []


class GuestError(VMError):
    pass
