"""A container's writable layer: a disk of its own (sized by ``--storage-opt size=``), kept across runs."""

from __future__ import annotations

import re

from tests.integration.conftest import Hyper, lines, wait_for

SCRIPT = "cat /kept 2>/dev/null; echo run >> /kept; df -k / | tail -n 1; " \
         "dd if=/dev/zero of=/filler bs=1M count=100 2>/dev/null || echo disk full; rm -f /filler"


def _exited(hyper: Hyper, name: str) -> bool:
    return hyper("inspect", "--format", "{{.State.Status}}", name).stdout.strip() == "exited"


def test_a_sized_writable_layer_is_a_limit_and_survives_a_restart(hyper: Hyper) -> None:
    first = hyper("run", "--name", "sized", "--storage-opt", "size=64M", "busybox", "sh", "-c", SCRIPT)
    assert first.returncode == 0, first.stderr
    [df, full] = lines(first.stdout)
    total_kib = int(df.split()[1])
    # ext4 on the 64 MiB disk, less its metadata: not the VM's tmpfs.
    assert 40_000 < total_kib <= 65_536, df
    assert full == "disk full"
    inspected = hyper("inspect", "--format", "{{json .HostConfig.StorageOpt}}", "sized")
    assert inspected.stdout.strip() == f'{{"size":"{64 << 20}"}}'

    again = hyper("start", "sized")
    assert (again.returncode, again.stdout) == (0, "sized\n"), again.stderr
    wait_for(lambda: _exited(hyper, "sized"), 60, "the second run to end")
    output = lines(hyper("logs", "sized").stdout)
    # The second run found the file the first one wrote: the layer was kept.
    assert len(output) == 5 and output[2] == "run" and output[4] == "disk full", output
    assert hyper("rm", "sized").returncode == 0


def test_a_container_keeps_its_changes_by_default_and_a_removed_one_has_a_tmpfs(hyper: Hyper) -> None:
    # As with docker: a container's files outlive a stop and a start, with no option given.
    first = hyper("run", "--name", "unsized", "busybox", "sh", "-c", "cat /kept 2>/dev/null; echo run >> /kept; "
                  "df -k / | tail -n 1")
    assert first.returncode == 0, first.stderr
    [df] = lines(first.stdout)
    assert int(df.split()[1]) > 8 << 20, df  # KiB: the daemon's default 10 GiB disk, not the VM's memory
    assert hyper("start", "unsized").returncode == 0
    wait_for(lambda: _exited(hyper, "unsized"), 60, "the second run to end")
    output = lines(hyper("logs", "unsized").stdout)
    assert len(output) == 3 and output[1] == "run", output
    assert hyper("rm", "unsized").returncode == 0
    # --rm: a tmpfs in the VM, no disk to make or to remove.
    removed = hyper("run", "--rm", "busybox", "sh", "-c", "df -k / | tail -n 1")
    assert removed.returncode == 0, removed.stderr
    assert int(removed.stdout.split()[1]) < 1 << 20, removed.stdout


def test_a_bad_storage_option_is_one_line(hyper: Hyper) -> None:
    for option, message in (("size=1K", "out of range"), ("size=lots", "invalid storage size"),
                            ("quota=1G", "unknown storage option 'quota'"), ("size", "expected KEY=VALUE")):
        result = hyper("run", "--rm", "--storage-opt", option, "busybox", "true")
        assert result.returncode == 125, result.stderr
        [line] = lines(result.stderr)
        assert re.match(r"hyper: ", line) and message in line, line
    assert hyper("ps", "-aq").stdout == ""
