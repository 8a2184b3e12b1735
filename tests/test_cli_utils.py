"""Shared fixture of the ``lightning-prune`` command's tests (no tests in this file)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _restore_cwd():
    cwd = os.getcwd()
    yield
    os.chdir(cwd)
