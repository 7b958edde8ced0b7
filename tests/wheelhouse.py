"""voiceagent installed the way a user installs it: from its wheel, into a fresh virtual
environment, offline.

``build_wheelhouse`` fills one folder, once per test session, with everything such an install
needs: the project's wheel (``pip wheel``); the runtime dependencies exactly as
requirements/service.lock.txt pins them (hashes checked); pytest and pytest-trio as the dev
lock pins them (what a generated project's tests need); and hatchling with editables, the
build backend of a generated project (the newest releases: no lock names them). That step
uses the package index or pip's cache, like any install; everything after it runs with
``--no-index --find-links <wheelhouse>``, so what the tests install is exactly what is in
the folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SERVICE_LOCK = ROOT / "requirements" / "service.lock.txt"
DEV_LOCK = ROOT / "requirements" / "dev.lock.txt"
TEST_TOOLS = ("pytest", "pytest-trio")      # what a generated project's [test] extra asks for
# a generated project's build-system.requires, and what hatchling adds for `pip install -e`
BUILD_BACKEND = ("hatchling>=1.25", "editables~=0.3")


@dataclass(frozen=True)
class Wheelhouse:
    folder: Path
    wheel: Path                 # voiceagent's own
    test_tools_lock: Path       # TEST_TOOLS and what they need, as the dev lock pins them

    def offline(self) -> list[str]:
        """pip options that install from this folder and nothing else."""
        return ["--no-index", "--find-links", str(self.folder)]


@dataclass(frozen=True)
class WheelVenv:
    folder: Path                # holds .venv (and nothing else at first)
    venv: Path
    wheelhouse: Wheelhouse

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def pip(*args: str, python: str | Path = sys.executable, timeout: float = 300) -> str:
    """Run pip (no version check, no user config); its output, or AssertionError with it."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    result = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                            timeout=timeout, check=False, env=env)
    assert result.returncode == 0, (f"pip {' '.join(args)}\n" + result.stdout[-3000:]
                                    + result.stderr[-4000:])
    return result.stdout


def lock_entries(lock: Path) -> dict[str, list[str]]:
    """Each pinned package of a uv lock, by canonical name: its requirement line with its
    ``--hash`` lines (a name pinned twice, under two markers, has two entries)."""
    entries: dict[str, list[str]] = {}
    blocks: list[list[str]] = []
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            blocks.append([line])
        elif blocks and line.strip().startswith("--hash"):
            blocks[-1].append(line)
    for block in blocks:
        name = canonicalize_name(Requirement(block[0].rstrip(" \\")).name)
        entries.setdefault(name, []).append("\n".join(block).rstrip(" \\"))
    return entries


def requirement_closure(roots: Iterable[str]) -> set[str]:
    """``roots`` and everything they need on this platform, by canonical name, read from the
    installed distributions' metadata (this environment has the dev lock installed)."""
    seen: set[str] = set()
    pending = [canonicalize_name(r) for r in roots]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or ():
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return seen


def build_wheelhouse(folder: Path) -> Wheelhouse:
    folder.mkdir(parents=True, exist_ok=True)
    pip("wheel", "--no-deps", "--wheel-dir", str(folder), str(ROOT))
    wheel, = folder.glob("voiceagent-*.whl")
    service = set(lock_entries(SERVICE_LOCK))
    dev = lock_entries(DEV_LOCK)
    needed = sorted(requirement_closure(TEST_TOOLS) - service)
    missing = [name for name in needed if name not in dev]
    assert not missing, f"{missing}: not in {DEV_LOCK.name}; run requirements/lock.sh"
    tools_lock = folder.parent / "test-tools.lock.txt"
    tools_lock.write_text("".join(entry + "\n" for name in needed for entry in dev[name]))
    pip("download", "--dest", str(folder), "--require-hashes", "-r", str(SERVICE_LOCK),
        "-r", str(tools_lock))
    pip("download", "--dest", str(folder), *BUILD_BACKEND)
    return Wheelhouse(folder, wheel, tools_lock)


def make_wheel_venv(folder: Path, wheelhouse: Wheelhouse) -> WheelVenv:
    """``folder/.venv``: the service lock (hashes checked), pytest and pytest-trio (the dev
    lock's pins), then voiceagent's wheel without resolving anything, then pip check, all
    from the wheelhouse. Made with the interpreter this session runs on, with pip in it."""
    venv = folder / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                   capture_output=True)
    python = venv / "bin" / "python"
    pip("install", "--no-compile", *wheelhouse.offline(), "--require-hashes",
        "-r", str(SERVICE_LOCK), "-r", str(wheelhouse.test_tools_lock), python=python)
    pip("install", "--no-compile", *wheelhouse.offline(), "--no-deps", str(wheelhouse.wheel),
        python=python)
    pip("check", python=python)
    return WheelVenv(folder, venv, wheelhouse)
