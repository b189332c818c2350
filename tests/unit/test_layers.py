"""Layer application on real directories: OCI semantics, and nothing ever written outside the target."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from hyperd.image import InvalidLayer
from hyperd.image.layers import MALFORMED, DigestReader, apply_layer, decompress, validate_layer

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="ownership, device nodes and trusted xattrs need root")

Member = tuple[tarfile.TarInfo, bytes | None]


# Owned by whoever runs the tests, so that everything but the root-only tests runs unprivileged.
UID, GID = os.getuid(), os.getgid()


def member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", mode: int = 0o644, uid: int = UID,
           gid: int = GID, mtime: int = 1_600_000_000, linkname: str = "", xattrs: dict[str, str] | None = None,
           device: tuple[int, int] = (0, 0)) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    info.linkname = linkname
    info.devmajor, info.devminor = device
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{key}": value for key, value in xattrs.items()}
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def directory(name: str, *, mode: int = 0o755, **kwargs: Any) -> Member:
    return member(name, tarfile.DIRTYPE, mode=mode, **kwargs)


def symlink(name: str, target: str) -> Member:
    return member(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Member:
    return member(name, tarfile.LNKTYPE, linkname=target)


def layer(*members: Member) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the target that escaping entries aim at: it must stay empty."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_regular_files_directories_and_metadata(target: Path) -> None:
    apply_layer(layer(
        directory("usr", mtime=1_000_000_000),
        directory("usr/bin", mode=0o750, mtime=1_100_000_000),
        member("usr/bin/tool", data=b"#!/bin/sh\necho hi\n", mode=0o4755, mtime=1_200_000_000),
        member("usr/share/doc/README", data=b"read me\n"),
    ), target)
    tool = target / "usr/bin/tool"
    assert tool.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o4755
    assert tool.stat().st_mtime == 1_200_000_000
    assert stat.S_IMODE((target / "usr/bin").stat().st_mode) == 0o750
    # Directory times are set after their content was written.
    assert (target / "usr").stat().st_mtime == 1_000_000_000
    assert (target / "usr/bin").stat().st_mtime == 1_100_000_000
    # A parent the layer does not list is created 0755 with the entry's mtime.
    assert stat.S_IMODE((target / "usr/share/doc").stat().st_mode) == 0o755
    assert (target / "usr/share/doc").stat().st_mtime == 1_600_000_000


@root_only
def test_ownership_and_setuid_survive_chown(target: Path) -> None:
    apply_layer(layer(
        member("su", data=b"x", mode=0o6755, uid=1000, gid=1001),
        directory("home", uid=1000, gid=100, mode=0o2775),
    ), target)
    su = (target / "su").stat()
    assert (su.st_uid, su.st_gid, stat.S_IMODE(su.st_mode)) == (1000, 1001, 0o6755)
    home = (target / "home").stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 100, 0o2775)


@root_only
def test_xattrs_from_pax_headers(target: Path) -> None:
    apply_layer(layer(
        member("f", data=b"x", xattrs={"user.origin": "layer", "trusted.note": "kept",
                                       "trusted.overlay.opaque": "y", "security.selinux": "host_t"}),
    ), target)
    names = set(os.listxattr(target / "f"))
    assert os.getxattr(target / "f", "user.origin") == b"layer"
    assert os.getxattr(target / "f", "trusted.note") == b"kept"
    # Overlay markers would steer the guest's overlayfs, LSM labels belong to the host.
    assert "trusted.overlay.opaque" not in names
    assert "security.selinux" not in names


def test_symlinks_are_kept_as_is_and_never_followed(target: Path, outside: Path) -> None:
    apply_layer(layer(
        symlink("passwd", "/etc/passwd"),
        symlink("out", str(outside)),
        symlink("rel", "../../somewhere"),
        symlink("out", "replaced"),
    ), target)
    assert os.readlink(target / "passwd") == "/etc/passwd"
    assert os.readlink(target / "rel") == "../../somewhere"
    # A later entry replaces the symlink itself, not what it points at.
    assert os.readlink(target / "out") == "replaced"
    assert listing(outside) == []


def test_hard_links_share_the_inode(target: Path) -> None:
    apply_layer(layer(
        member("bin/busybox", data=b"binary", mode=0o755),
        hardlink("bin/sh", "bin/busybox"),
        hardlink("sbin/init", "./bin/busybox"),
    ), target)
    inode = (target / "bin/busybox").stat().st_ino
    assert (target / "bin/sh").stat().st_ino == inode
    assert (target / "sbin/init").stat().st_ino == inode
    assert (target / "bin/busybox").stat().st_nlink == 3


def test_hard_link_to_a_symlink_links_the_symlink(target: Path) -> None:
    apply_layer(layer(symlink("pw", "/etc/passwd"), hardlink("pw2", "pw")), target)
    assert os.readlink(target / "pw2") == "/etc/passwd"
    assert os.lstat(target / "pw2").st_ino == os.lstat(target / "pw").st_ino


@root_only
def test_device_nodes_and_fifos(target: Path) -> None:
    apply_layer(layer(
        member("dev/null", tarfile.CHRTYPE, mode=0o666, device=(1, 3)),
        member("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, device=(7, 0)),
        member("run/fifo", tarfile.FIFOTYPE, mode=0o600),
    ), target)
    null = (target / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and stat.S_IMODE(null.st_mode) == 0o666
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop = (target / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and loop.st_gid == 6
    assert stat.S_ISFIFO((target / "run/fifo").lstat().st_mode)


def test_whiteouts_delete_lower_entries(target: Path) -> None:
    apply_layer(layer(
        member("etc/keep", data=b"1"),
        member("etc/drop", data=b"2"),
        member("var/cache/big/file", data=b"3"),
        symlink("lib", "usr/lib"),
    ), target)
    apply_layer(layer(
        member("etc/.wh.drop"),
        member("var/cache/.wh.big"),
        member(".wh.lib"),
        member("etc/.wh.never-existed"),
    ), target)
    assert listing(target) == ["etc", "etc/keep", "var", "var/cache"]


def test_whiteout_spares_the_same_layers_entries(target: Path) -> None:
    apply_layer(layer(member("a", data=b"lower")), target)
    apply_layer(layer(member("a", data=b"upper"), member(".wh.a")), target)
    assert (target / "a").read_bytes() == b"upper"


def test_opaque_directory_hides_lower_content_but_keeps_its_own(target: Path) -> None:
    apply_layer(layer(
        member("d/old", data=b"old"),
        member("d/sub/old", data=b"old"),
        member("d/sub2/x", data=b"x"),
        member("other/kept", data=b"kept"),
    ), target)
    apply_layer(layer(
        member("d/before", data=b"new"),       # before the marker: still this layer's
        member("d/.wh..wh..opq"),
        member("d/sub/new", data=b"new"),
    ), target)
    assert listing(target / "d") == ["before", "sub", "sub/new"]
    assert (target / "other/kept").read_bytes() == b"kept"


def test_replacing_a_lower_symlink_with_a_directory(target: Path, outside: Path) -> None:
    apply_layer(layer(symlink("etc", str(outside))), target)
    apply_layer(layer(directory("etc"), member("etc/passwd", data=b"root:x:0:0::/:/bin/sh\n")), target)
    assert (target / "etc").is_dir() and not (target / "etc").is_symlink()
    assert (target / "etc/passwd").read_bytes().startswith(b"root:")
    assert listing(outside) == []


def test_file_replaces_lower_directory_and_directory_merges(target: Path) -> None:
    apply_layer(layer(member("x/inner", data=b"1"), member("y/a", data=b"a")), target)
    apply_layer(layer(member("x", data=b"now a file"), directory("y", mode=0o700), member("y/b", data=b"b")), target)
    assert (target / "x").read_bytes() == b"now a file"
    assert listing(target / "y") == ["a", "b"]
    assert stat.S_IMODE((target / "y").stat().st_mode) == 0o700


def test_untouched_mtimes_of_lower_directories_are_kept(target: Path) -> None:
    apply_layer(layer(directory("etc", mtime=1_000_000_000), member("etc/a", data=b"a")), target)
    apply_layer(layer(member("etc/b", data=b"b"), member("etc/.wh.a")), target)
    assert listing(target / "etc") == ["b"]
    # The upper layer did not list etc: adding and removing in it must not stamp it with "now".
    assert (target / "etc").stat().st_mtime == 1_000_000_000


def test_root_entry_and_dot_slash_names(target: Path) -> None:
    apply_layer(layer(directory("./", mode=0o755, mtime=1_500_000_000), member("./etc/hostname", data=b"h\n")),
                target)
    assert (target / "etc/hostname").read_bytes() == b"h\n"
    assert target.stat().st_mtime == 1_500_000_000


def test_streams_compressed_non_seekable_input(target: Path) -> None:
    data = os.urandom(3 << 20)
    compressed = gzip.compress(layer(member("big", data=data)).getvalue())

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.source = io.BytesIO(compressed)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            chunk = self.source.read(min(len(buffer), 4096))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    apply_layer(io.BufferedReader(Pipe()), target)
    assert (target / "big").read_bytes() == data


def test_deep_paths_beyond_the_descriptor_cache(target: Path) -> None:
    deep = "/".join(["d"] * 150)
    apply_layer(layer(member(f"{deep}/leaf", data=b"deep"), member("d/d/top", data=b"top")), target)
    assert (target / deep / "leaf").read_bytes() == b"deep"
    assert (target / "d/d/top").read_bytes() == b"top"


# -- unsafe layers -------------------------------------------------------------------------------


Escape = Callable[[Path], list[Member]]
ESCAPES: list[tuple[str, Escape, str]] = [
    ("dotdot", lambda out: [member("../x", data=b"pwned")], '"../x" escapes the root'),
    ("nested-dotdot", lambda out: [member("a/../../x", data=b"pwned")], '"a/../../x" escapes the root'),
    ("absolute", lambda out: [member("/x", data=b"pwned")], '"/x" is an absolute path'),
    ("symlink-parent", lambda out: [symlink("link", str(out)), member("link/file", data=b"pwned")],
     '"link/file" traverses the symlink "link"'),
    # link -> / then link/<outside>/file: a broken implementation would write into `outside`, not the host's /.
    ("symlink-parent-to-root", lambda out: [symlink("link", "/"), member(f"link{out}/file", data=b"pwned")],
     'traverses the symlink "link"'),
    ("symlink-parent-dir", lambda out: [symlink("link", str(out)), directory("link/sub")],
     '"link/sub" traverses the symlink "link"'),
    ("hardlink-dotdot", lambda out: [hardlink("x", "../../etc/passwd")],
     'entry "x" hard link target "../../etc/passwd" escapes the root'),
    ("hardlink-absolute", lambda out: [hardlink("x", "/etc/passwd")],
     'entry "x" hard link target "/etc/passwd" is an absolute path'),
    ("hardlink-through-symlink", lambda out: [symlink("l", "/etc"), hardlink("x", "l/passwd")],
     'entry "x" hard link target "l/passwd" traverses the symlink "l"'),
    ("whiteout-through-symlink", lambda out: [symlink("l", str(out)), member("l/.wh.victim")],
     '"l/.wh.victim" traverses the symlink "l"'),
    ("opaque-through-symlink", lambda out: [symlink("l", str(out)), member("l/.wh..wh..opq")],
     '"l/.wh..wh..opq" traverses the symlink "l"'),
    ("whiteout-of-parent", lambda out: [member("a/.wh...")], '"a/.wh..." is not a valid whiteout'),
]


@pytest.mark.parametrize("build, message", [pytest.param(b, m, id=n) for n, b, m in ESCAPES])
def test_unsafe_entries_are_rejected_naming_them(build: Escape, message: str, target: Path, outside: Path) -> None:
    (outside / "victim").write_text("intact")
    passwd_links = os.stat("/etc/passwd").st_nlink
    with pytest.raises(InvalidLayer) as rejected:
        apply_layer(layer(*build(outside)), target)
    assert message in str(rejected.value)
    assert str(rejected.value).startswith("layer rejected: entry ")
    with pytest.raises(InvalidLayer) as validated:
        validate_layer(layer(*build(outside)))
    assert str(validated.value) == str(rejected.value)
    assert listing(outside) == ["victim"] and (outside / "victim").read_text() == "intact"
    assert not (target.parent / "x").exists()
    assert os.stat("/etc/passwd").st_nlink == passwd_links


def test_symlink_from_a_lower_layer_is_not_followed(target: Path, outside: Path) -> None:
    apply_layer(layer(symlink("etc", str(outside))), target)
    with pytest.raises(InvalidLayer, match='entry "etc/passwd" traverses the symlink "etc"'):
        apply_layer(layer(member("etc/passwd", data=b"pwned")), target)
    with pytest.raises(InvalidLayer, match='entry "x" hard link target "etc/shadow" traverses the symlink "etc"'):
        apply_layer(layer(hardlink("x", "etc/shadow")), target)
    assert listing(outside) == []


def test_parent_that_is_a_file_is_rejected(target: Path) -> None:
    with pytest.raises(InvalidLayer, match='entry "f/x" has a parent "f" that is not a directory'):
        apply_layer(layer(member("f", data=b"file"), member("f/x", data=b"x")), target)


@pytest.mark.parametrize("members, message", [
    ([hardlink("x", "missing")], 'hard link target "missing" does not exist'),
    ([directory("d"), hardlink("x", "d")], 'hard link target "d" is a directory'),
    ([member(".", tarfile.REGTYPE)], "replaces the root directory with a file"),
])
def test_base_layer_checks(members: list[Member], message: str) -> None:
    with pytest.raises(InvalidLayer, match=message):
        validate_layer(layer(*members), base=True)


def test_hard_link_to_a_lower_directory_is_rejected(target: Path) -> None:
    apply_layer(layer(directory("d")), target)
    with pytest.raises(InvalidLayer, match='entry "x" hard link target "d" is a directory'):
        apply_layer(layer(hardlink("x", "d")), target)


def test_hard_link_to_lower_layer_file_is_fine_unless_base(target: Path) -> None:
    apply_layer(layer(member("lower", data=b"l")), target)
    validate_layer(layer(hardlink("x", "lower")))
    apply_layer(layer(hardlink("x", "lower")), target)
    assert (target / "x").stat().st_ino == (target / "lower").stat().st_ino
    with pytest.raises(InvalidLayer, match="does not exist"):
        validate_layer(layer(hardlink("x", "lower")), base=True)


@pytest.mark.parametrize("blob", [b"", b"this is not a tar archive" * 40, gzip.compress(b"\0" * 100)[:-12],
                                  b"\x28\xb5\x2f\xfd" + b"\0" * 600])
def test_malformed_archives(blob: bytes, target: Path) -> None:
    with pytest.raises(InvalidLayer, match="layer rejected: "):
        validate_layer(io.BytesIO(blob))
    with pytest.raises(InvalidLayer, match="layer rejected: "):
        apply_layer(io.BytesIO(blob), target)


def test_zstd_layer_of_several_frames_is_applied(target: Path) -> None:
    plain = layer(member("a", data=b"one"), member("b", data=os.urandom(300_000))).getvalue()
    # As pigz-like parallel compressors write it: independent frames, one after the other.
    compressed = b"".join(zstandard.ZstdCompressor().compress(plain[start:start + 100_000])
                          for start in range(0, len(plain), 100_000))
    content = DigestReader(decompress(io.BytesIO(compressed)))
    apply_layer(io.BufferedReader(content), target)
    content.drain()
    assert content.size == len(plain)
    assert (target / "a").read_bytes() == b"one"
    assert (target / "b").stat().st_size == 300_000


@pytest.mark.parametrize("cut", [1, 4096, 10])
def test_truncated_zstd_is_refused(cut: int, target: Path) -> None:
    compressed = zstandard.ZstdCompressor().compress(layer(member("a", data=os.urandom(20_000))).getvalue())
    with pytest.raises(MALFORMED):
        decompress(io.BytesIO(compressed[:-cut])).read()
    with pytest.raises(InvalidLayer, match="layer rejected: "):
        apply_layer(io.BufferedReader(DigestReader(decompress(io.BytesIO(compressed[:-cut])))), target)


def test_gzip_layer_of_several_members_is_applied(target: Path) -> None:
    plain = layer(member("a", data=b"one"), member("b", data=os.urandom(300_000))).getvalue()
    # As pigz and other parallel compressors write it: independent members, one after the other.
    compressed = b"".join(gzip.compress(plain[start:start + 100_000]) for start in range(0, len(plain), 100_000))
    content = DigestReader(decompress(io.BytesIO(compressed)))
    apply_layer(io.BufferedReader(content), target)
    content.drain()
    assert content.size == len(plain)
    assert (target / "b").stat().st_size == 300_000


def test_gzip_output_comes_in_bounded_pieces() -> None:
    bomb = gzip.compress(bytes(50 << 20))  # 50 MiB of zeros in about 50 kB
    stream = decompress(io.BytesIO(bomb))
    assert len(stream.read(1 << 16)) == 1 << 16


@pytest.mark.parametrize("cut", [1, 8, 4096])
def test_truncated_gzip_is_refused(cut: int) -> None:
    compressed = gzip.compress(layer(member("a", data=os.urandom(20_000))).getvalue())
    with pytest.raises(MALFORMED):
        decompress(io.BytesIO(compressed[:-cut])).read()
