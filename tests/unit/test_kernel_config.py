"""The kernel build refuses a config that lost a requested option (no kernel build here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parents[2] / "kernel-config"


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kernel_build", HERE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_fragment_is_read(tmp_path: Path) -> None:
    build = builder()
    wanted = build.requested(build.fragments())
    for option in ("CONFIG_PVH", "CONFIG_VIRTIO_MMIO", "CONFIG_EROFS_FS", "CONFIG_OVERLAY_FS", "CONFIG_MEMCG",
                   "CONFIG_SECCOMP_FILTER", "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_9P_FS", "CONFIG_NO_HZ_IDLE"):
        assert wanted[option] == "y", option
    assert wanted["CONFIG_MODULES"] is None


def test_missing_and_unwanted_options_are_named(tmp_path: Path) -> None:
    build = builder()
    fragment = tmp_path / "a.config"
    fragment.write_text("CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=16\n# CONFIG_C is not set\n")
    final = tmp_path / ".config"
    final.write_text("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=8\nCONFIG_C=y\n")
    problems = build.missing_options(final, build.requested([fragment]))
    assert problems == [
        "CONFIG_B=y requested, final config has nothing",
        "CONFIG_N=16 requested, final config has 8",
        "CONFIG_C should be unset but is y",
    ]
    final.write_text("CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=16\n")
    assert build.missing_options(final, build.requested([fragment])) == []


def test_the_cache_key_follows_the_fragments(tmp_path: Path) -> None:
    build = builder()
    fragment = tmp_path / "a.config"
    fragment.write_text("CONFIG_A=y\n")
    first = build.cache_key("6.1.1-1", [fragment])
    assert build.cache_key("6.1.1-1", [fragment]) == first
    assert build.cache_key("6.1.2-1", [fragment]) != first
    fragment.write_text("CONFIG_A=y\nCONFIG_B=y\n")
    assert build.cache_key("6.1.1-1", [fragment]) != first
