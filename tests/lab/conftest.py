"""Fixtures for the lab's own tests: one lab per test session, on a prefix of its own
(`cpt<pid>-`), so a demo lab running under `cpl-` is never disturbed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hil.lab import Lab

NOT_ROOT = os.geteuid() != 0
NOT_ROOT_REASON = "needs root: the lab builds network namespaces (CI runs these as root)"


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if NOT_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    the_lab = Lab(prefix=f"cpt{os.getpid()}-")
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    """The session lab, with every impairment cleared after the test (and before)."""
    _clear(lab)
    yield lab
    _clear(lab)


def _clear(lab: Lab) -> None:
    lab.impair("primary", "clear")
    lab.impair("cellular", "clear")
    lab.impair("target", "clear")

