"""Fixtures and markers of the suite (shared helpers live in tests/helpers.py).

Tests-only defaults, set here for the whole session:

- ``SPLITLORA_CACHE`` points at one temporary folder per session (removed at the end), so
  the demo backbone is pretrained at most once per session, every run of the demo (in this
  process or in a subprocess, which inherits the variable) reuses it, and nothing is written
  to the user's cache;
- one CPU thread per process (``OMP_NUM_THREADS``, inherited by the subprocesses the tests
  start, unless already set): the tiny models of the tests run several times faster on one
  thread than on threads that contend with each other and with the other processes;
- every test starts from ``torch.manual_seed(0)``.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# one folder per session, even when this file is imported a second time (as tests.conftest,
# by the test files not yet moved)
_OWNER = f"{os.getpid()}:"
if os.environ.get("_SPLITLORA_TEST_CACHE", "").startswith(_OWNER):
    _CACHE = os.environ["_SPLITLORA_TEST_CACHE"][len(_OWNER):]
else:
    _CACHE = tempfile.mkdtemp(prefix="splitlora-test-cache-")
    os.environ["_SPLITLORA_TEST_CACHE"] = _OWNER + _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["SPLITLORA_CACHE"] = _CACHE
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from tests.helpers import DemoRuns  # noqa: E402


_DEMO = None  # the demo's runs, started in the background when the session begins


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Tests that use the ``demo_runs`` fixture run last."""
    demo = [item for item in items if "demo_runs" in getattr(item, "fixturenames", ())]
    if demo:
        items[:] = [item for item in items if item not in demo] + demo


def pytest_collection_finish(session):
    """The demo's runs start now when a selected test needs them."""
    global _DEMO
    if any("demo_runs" in getattr(item, "fixturenames", ()) for item in session.items):
        workdir = tempfile.mkdtemp(prefix="splitlora-test-demo-")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        _DEMO = DemoRuns(Path(workdir)).start()


def pytest_sessionfinish(session, exitstatus):
    if _DEMO is not None:
        _DEMO.stop()


@pytest.fixture(scope="session")
def demo_runs():
    """The demo's runs (tests/helpers.py DemoRuns): their working folder and results."""
    assert _DEMO is not None, "started by pytest_collection_modifyitems"
    return _DEMO


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cache_dir() -> str:
    """The session's SPLITLORA_CACHE (the demo backbone lands there)."""
    return _CACHE
