"""The CLI caps glibc's heap arenas (flat peak memory); the user's MALLOC_ARENA_MAX wins."""

from __future__ import annotations

import platform

import pytest

from sschsr_deploy.malloc_arenas import limit_malloc_arenas


def test_user_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_cap_is_applied_with_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True


def test_no_libc_found_is_harmless(monkeypatch):
    import ctypes.util

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert limit_malloc_arenas() is False
