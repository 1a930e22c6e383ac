"""What a new user installs and sees: the locked versions, no deprecation walls, no network at import."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, str]:
    """The lock's pins that apply to this interpreter and platform: name -> version."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line or line[0] in " #":
            continue
        spec, _, marker = line.partition(";")
        name, _, version = spec.strip().partition("==")
        assert version, f"not an exact pin in the lock: {line!r}"
        if not marker.strip() or Marker(marker.strip()).evaluate():
            pins[canonicalize_name(name)] = version
    return pins


def makefile_var(name: str) -> str:
    return re.search(rf"^{name}\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)


@pytest.mark.skipif(os.environ.get("R1LITE_UNLOCKED") == "1", reason="make test-latest runs the newest versions")
def test_the_venv_holds_exactly_the_locked_versions():
    """What `make test` tested is what a newcomer gets: every locked package installed at its pinned version
    (torch by version; its CPU or CUDA build is the machine's choice)."""
    wrong = {}
    for name, version in locked().items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = "missing"
        if (
            have == "missing"
            or Version(have).public != Version(version).public
            or (name != "torch" and have != version)
        ):
            wrong[name] = f"{have} (locked {version})"
    assert not wrong, f"the venv differs from requirements.lock (make install reinstalls it): {wrong}"


def test_the_lock_pins_every_dependency_within_pyprojects_ranges():
    """Editing pyproject.toml without `make lock` fails here, not on a newcomer's machine."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and line[0] not in " #":
            name, _, version = line.split(";")[0].strip().partition("==")
            pins.setdefault(canonicalize_name(name), []).append(version)
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(text)
        versions = pins.get(canonicalize_name(req.name))
        assert versions, f"{req.name} is in pyproject.toml but not in requirements.lock: run make lock"
        assert all(req.specifier.contains(v, prereleases=True) for v in versions), f"{req} vs locked {versions}"
    assert pins["torch"] == [makefile_var("TORCH")]
    cuda_only = [n for n in pins if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert not cuda_only, f"torch's CUDA packages come with its CUDA build, never from the lock: {cuda_only}"


def test_pyproject_uses_an_spdx_license_string():
    """A TOML-table license makes setuptools print a deprecation notice several times per install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in project["build-system"]["requires"])


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)


OFFLINE_IMPORT = """
import socket, sys
tried = []
def unreachable(*args, **kwargs):
    tried.append(repr(args[:2]))
    raise OSError(101, "Network is unreachable")
socket.getaddrinfo = socket.socket.connect = socket.socket.connect_ex = socket.create_connection = unreachable
import r1lite.cli.main
sys.argv = ["r1lite", "--help"]
try:
    r1lite.cli.main.main()
except SystemExit as e:
    assert not e.code, e.code
import bitsandbytes, peft, trl  # what try, export and the stages import
import tempfile, transformers  # and a model loaded from a local folder, as every stage does
transformers.utils.logging.disable_progress_bar()  # the test's own save and load, not r1lite's
config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2)
folder = tempfile.mkdtemp()
transformers.LlamaForCausalLM(config).save_pretrained(folder)
transformers.AutoModelForCausalLM.from_pretrained(folder)
try:
    import kernels
    print("KERNELS IMPORTED")
except ImportError:
    pass
print("TRIED", tried)
"""


def user_env(**extra: str) -> dict[str, str]:
    """A user's environment: HF_HUB_OFFLINE (which CI sets) and the opt-in both unset."""
    env = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "R1LITE_HUB_KERNELS"}}
    return env | extra


def test_the_cli_and_bitsandbytes_import_with_no_network_without_trying_it_or_printing():
    """bitsandbytes asks the Hub for a kernel at import on CPUs with AVX512-BF16, through `kernels`; r1lite
    keeps it from doing so, on every CPU (the `kernels` import is refused before bitsandbytes tries it)."""
    out = subprocess.run(
        [sys.executable, "-c", OFFLINE_IMPORT], capture_output=True, text=True, timeout=300, env=user_env()
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Usage: r1lite" in out.stdout
    assert "TRIED []" in out.stdout, out.stdout[-500:]
    assert "KERNELS IMPORTED" not in out.stdout
    assert out.stderr == ""


def test_hub_kernels_are_an_opt_in():
    code = "import r1lite, kernels; print('KERNELS', kernels.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=user_env(R1LITE_HUB_KERNELS="1", HF_HUB_OFFLINE="1"),
    )
    assert "KERNELS kernels" in out.stdout, out.stderr[-1000:]


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
