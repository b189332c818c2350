"""cp, diff and commit without a VM: commit's Dockerfile changes, the host-side unpacking of a
container's archive, the guest's reading of an overlay upper layer, and cp's argument split."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from cli.files import split_target
from hyperd.image import InvalidLayer
from hyperd.image.changes import InvalidChange, apply
from hyperd.image.layers import apply_layer, extract, validate_layer
from hyperd.image.store import ImageConfig
from hyperstart import changes


def test_changes_set_the_runtime_config() -> None:
    base = ImageConfig(cmd=("sh",), env=("PATH=/bin", "A=1"), working_dir="/srv", labels={"x": "1"})
    config = apply(base, ['CMD ["echo", "hi there"]', "ENTRYPOINT /init --flag", "ENV A=2 B='two words'",
                          "ENV LEGACY some value", "LABEL y=2", "EXPOSE 80 53/udp", "WORKDIR app",
                          "USER nobody:nogroup", "STOPSIGNAL SIGINT"])
    assert config.cmd == ("echo", "hi there")
    assert config.entrypoint == ("/bin/sh", "-c", "/init --flag")
    assert config.env == ("PATH=/bin", "A=2", "B=two words", "LEGACY=some value")
    assert config.labels == {"x": "1", "y": "2"}
    assert config.exposed_ports == ("53/udp", "80/tcp")
    assert (config.working_dir, config.user, config.stop_signal) == ("/srv/app", "nobody:nogroup", "SIGINT")
    assert apply(base, ["cmd [not json"]).cmd == ("/bin/sh", "-c", "[not json")


@pytest.mark.parametrize(("change", "message"), [
    ("RUN rm -rf /", "RUN is not a valid change command"),
    ("", "an empty change is not a valid change command"),
    ("CMD", "CMD requires at least one argument"),
    ("EXPOSE 99999", "EXPOSE: invalid port '99999'"),
    ("EXPOSE http", "EXPOSE: invalid port 'http'"),
    ("ENV A=1 B", "ENV: 'B' is not KEY=VALUE"),
    ("ENV ONLY", "ENV names ONLY without a value"),
    ("LABEL a='open", "LABEL: No closing quotation"),
])
def test_bad_changes_are_refused(change: str, message: str) -> None:
    with pytest.raises(InvalidChange, match=f"^{message}$"):
        apply(ImageConfig(), [change])


def _archive(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    """A tar of (name, kind, data or link target); kinds: file, dir, symlink, link."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o640
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "link": tarfile.LNKTYPE}[kind]
            info.linkname = str(data)
            tar.addfile(info)
    out.seek(0)
    return out


def test_extract_renames_the_top_entry_and_keeps_whiteout_names(tmp_path: Path) -> None:
    archive = _archive(("src", "dir", ""), ("src/.wh.file", "file", b"plain\n"), ("src/a", "file", b"a\n"),
                       ("src/hard", "link", "src/a"), ("src/up", "symlink", "/etc"))
    extract(archive, tmp_path, ("src", "dest"))
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [".wh.file", "a", "hard", "up"]
    assert (tmp_path / "dest" / ".wh.file").read_bytes() == b"plain\n"
    assert (tmp_path / "dest" / "hard").stat().st_ino == (tmp_path / "dest" / "a").stat().st_ino
    assert os.readlink(tmp_path / "dest" / "up") == "/etc"
    assert (tmp_path / "dest" / "a").stat().st_mode & 0o777 == 0o640


def test_extract_into_the_target_itself(tmp_path: Path) -> None:
    extract(_archive(("src", "dir", ""), ("src/a", "file", b"a\n")), tmp_path, ("src", "."))
    assert (tmp_path / "a").read_bytes() == b"a\n"


@pytest.mark.parametrize(("members", "reason"), [
    ((("other/a", "file", b"x"),), 'is not under "src"'),
    ((("src/../../a", "file", b"x"),), "escapes the root"),
    ((("src", "dir", ""), ("src/up", "symlink", "/"), ("src/up/planted", "file", b"x")), "traverses the symlink"),
])
def test_extract_refuses_what_would_land_outside(tmp_path: Path, members: tuple[tuple[str, str, bytes | str], ...],
                                                 reason: str) -> None:
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(InvalidLayer, match=reason):
        extract(_archive(*members), target, ("src", "dest"))
    assert not (tmp_path / "planted").exists() and not Path("/planted").exists()


@pytest.fixture
def overlay(tmp_path: Path) -> tuple[Path, Path]:
    """A lower layer and an upper one as overlayfs leaves them after changes."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for directory in ("etc", "home/old", "var"):
        (lower / directory).mkdir(parents=True)
    (lower / "etc" / "group").write_bytes(b"root:x:0:\n")
    (lower / "etc" / "profile").write_bytes(b"lower\n")
    (lower / "home" / "old" / "file").write_bytes(b"old\n")
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "profile").write_bytes(b"upper\n")
    (upper / "etc" / "added").write_bytes(b"new\n")
    (upper / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")  # generated: never a change
    os.mknod(upper / "etc" / "group", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    (upper / "home").mkdir()
    os.setxattr(upper / "home", "trusted.overlay.opaque", b"y")  # deleted, then made again
    (upper / "home" / "fresh").write_bytes(b"fresh\n")
    return lower, upper


def test_diff_reads_the_upper_layer(overlay: tuple[Path, Path]) -> None:
    lower, upper = overlay
    assert changes.diff(str(upper), [str(lower)]) == [
        "C /etc", "A /etc/added", "D /etc/group", "C /etc/profile", "C /home", "A /home/fresh"]


def test_layer_of_the_upper_layer_applies_as_the_overlay_shows_it(overlay: tuple[Path, Path], tmp_path: Path) -> None:
    lower, upper = overlay
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        changes.layer(str(upper), tar)
    validate_layer(io.BytesIO(out.getvalue()))
    merged = tmp_path / "merged"
    shutil.copytree(lower, merged, symlinks=True)
    apply_layer(io.BytesIO(out.getvalue()), merged)
    found = sorted(str(p.relative_to(merged)) for p in merged.rglob("*"))
    assert found == ["etc", "etc/added", "etc/profile", "home", "home/fresh", "var"]
    assert (merged / "etc" / "profile").read_bytes() == b"upper\n"


@pytest.mark.parametrize(("argument", "split"), [
    ("web:/etc/passwd", ("web", "/etc/passwd")),
    ("web:relative", ("web", "relative")),
    ("/host/path", (None, "/host/path")),
    ("./local:file", (None, "./local:file")),
    ("dir/with:colon", (None, "dir/with:colon")),
    ("-", (None, "-")),
])
def test_cp_arguments(argument: str, split: tuple[str | None, str]) -> None:
    assert split_target(argument) == split
