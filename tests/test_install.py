"""What a new user sees when installing and running: no deprecation walls, no notices about optional kernels."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_uses_an_spdx_license_string():
    """A TOML-table license makes setuptools print a deprecation notice several times per install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in project["build-system"]["requires"])


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)


def test_no_notice_about_the_optional_kernels_package():
    # the notice bitsandbytes logs on CPUs with AVX512-BF16, emitted by hand so every CPU checks the filter
    logged = run_python(
        "import logging, r1lite; logging.getLogger('bitsandbytes.backends.cpu.ops').warning("
        "\"Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'\")"
    )
    assert "kernels-community" not in logged.stderr
    # and the real import (on this CPU it logs the notice when it has AVX512-BF16)
    real = run_python("import r1lite.cli.main, bitsandbytes")
    assert "kernels-community" not in real.stderr
    other = run_python("import logging, r1lite; logging.getLogger('bitsandbytes.backends.cpu.ops').warning('other')")
    assert "other" in other.stderr  # only that notice is hidden
