"""Errors the ``hyper`` client reports to its user.

Every failure the user should see as one ``hyper: <message>`` line is a :class:`HyperError`;
its ``exit_code`` follows Docker's convention (125 for the client or daemon, 126 and 127 when
the container's command cannot be run)::

    HyperError                 root; exit 125 unless told otherwise
    ├── DaemonUnreachable      the socket is missing, refuses us or is not ours to open
    ├── APIError               a non-2xx response; carries the HTTP status and the daemon's ExitCode
    └── StreamError            a malformed attach/logs stream
"""

from __future__ import annotations

EXIT_DAEMON = 125
"""Docker's exit status for a failure of the client or daemon rather than the container."""


class HyperError(Exception):
    """A failure reported to the user as one line."""

    def __init__(self, message: str, exit_code: int = EXIT_DAEMON) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class DaemonUnreachable(HyperError):
    """hyperd does not answer on its socket."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(
            f"cannot connect to hyperd at {host} ({reason}): is it running? Start it with 'hyper daemon' (or 'hyperd')"
        )
        self.host = host
        self.reason = reason


class APIError(HyperError):
    """hyperd answered with an error status; ``message`` is the daemon's own text."""

    def __init__(self, status: int, message: str, exit_code: int | None = None) -> None:
        super().__init__(message, EXIT_DAEMON if exit_code is None else exit_code)
        self.status = status


class StreamError(HyperError):
    """An output stream from hyperd broke its framing."""
