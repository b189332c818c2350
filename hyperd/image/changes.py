"""``hyper commit --change``: the Dockerfile instructions that set an image's runtime config.

docker accepts CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER and WORKDIR here (and
ONBUILD and VOLUME, which hyper's images do not carry); the others are refused with
docker's wording.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import replace

from hyperd.image import ImageError
from hyperd.image.store import ImageConfig

INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "WORKDIR")
_PORT = re.compile(r"(\d{1,5})(/(tcp|udp|sctp))?")


class InvalidChange(ImageError):
    pass


def apply(config: ImageConfig, changes: list[str]) -> ImageConfig:
    """``config`` with each change applied in order."""
    for change in changes:
        instruction, _, rest = change.strip().partition(" ")
        keyword, rest = instruction.upper(), rest.strip()
        if keyword not in INSTRUCTIONS:
            raise InvalidChange(f"{instruction} is not a valid change command" if instruction
                                else "an empty change is not a valid change command")
        if not rest:
            raise InvalidChange(f"{keyword} requires at least one argument")
        config = _APPLY[keyword](config, rest)
    return config


def _command(rest: str) -> tuple[str, ...]:
    """The exec form (a JSON array of strings) or the shell form, as a Dockerfile reads them."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
    return ("/bin/sh", "-c", rest)


def _pairs(keyword: str, rest: str) -> list[tuple[str, str]]:
    """``K=V K2="V 2"`` (or the legacy ``K V``, one pair) as pairs."""
    try:
        words = shlex.split(rest)
    except ValueError as err:
        raise InvalidChange(f"{keyword}: {err}") from err
    if "=" not in words[0]:
        key, _, value = rest.partition(" ")
        if not value.strip():
            raise InvalidChange(f"{keyword} names {key} without a value")
        return [(key, value.strip())]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise InvalidChange(f"{keyword}: {word!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _env(config: ImageConfig, rest: str) -> ImageConfig:
    env = dict(item.partition("=")[::2] for item in config.env)
    env.update(_pairs("ENV", rest))
    return replace(config, env=tuple(f"{k}={v}" for k, v in env.items()))


def _label(config: ImageConfig, rest: str) -> ImageConfig:
    return replace(config, labels={**config.labels, **dict(_pairs("LABEL", rest))})


def _expose(config: ImageConfig, rest: str) -> ImageConfig:
    ports = set(config.exposed_ports)
    for word in rest.split():
        match = _PORT.fullmatch(word)
        if match is None or not 0 < int(match[1]) < 65536:
            raise InvalidChange(f"EXPOSE: invalid port {word!r}")
        ports.add(f"{int(match[1])}/{match[3] or 'tcp'}")
    return replace(config, exposed_ports=tuple(sorted(ports)))


def _workdir(config: ImageConfig, rest: str) -> ImageConfig:
    return replace(config, working_dir=posixpath.normpath(posixpath.join(config.working_dir or "/", rest)))


_APPLY = {
    "CMD": lambda config, rest: replace(config, cmd=_command(rest)),
    "ENTRYPOINT": lambda config, rest: replace(config, entrypoint=_command(rest)),
    "ENV": _env,
    "EXPOSE": _expose,
    "LABEL": _label,
    "STOPSIGNAL": lambda config, rest: replace(config, stop_signal=rest),
    "USER": lambda config, rest: replace(config, user=rest),
    "WORKDIR": _workdir,
}
