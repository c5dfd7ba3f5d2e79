"""PyTorch and JAX interoperability (DLPack in and out, PyTorch autograd as a second
oracle). Each check runs in a fresh interpreter; tests/interop.py says why."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import interop

pytestmark = pytest.mark.gpu

HERE = pathlib.Path(__file__).resolve().parent


@pytest.mark.parametrize("check", sorted(interop.CHECKS))
def test_interop(check):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    proc = subprocess.run(
        [sys.executable, str(HERE / "interop.py"), check], capture_output=True, text=True, timeout=600, env=env
    )
    if proc.returncode == interop.SKIP:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, f"{check} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
