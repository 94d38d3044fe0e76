"""The huge-page launcher: when it re-executes, and the environment it re-executes with."""

from __future__ import annotations

from mbc_jax import launch


def test_huge_pages_only_when_asked_for_and_not_yet_set(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("MBC_JAX_HUGE_PAGES", "0")
    assert not launch.huge_pages_would_help()
    monkeypatch.setenv("MBC_JAX_HUGE_PAGES", "1")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert not launch.huge_pages_would_help()
    monkeypatch.setattr(launch, "THP_MODE", "/nonexistent/enabled")
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert not launch.huge_pages_would_help()


def test_without_huge_pages_keeps_other_tunables():
    env = {"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.hugetlb=1", "HOME": "/h"}
    assert launch.without_huge_pages(env) == {"GLIBC_TUNABLES": "glibc.malloc.check=0", "HOME": "/h"}
    assert launch.without_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == {}
    assert env["GLIBC_TUNABLES"].endswith("hugetlb=1")  # the input is not modified
