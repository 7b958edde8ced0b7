"""voiceagent installed the way a user installs it: from its wheel, into a fresh virtual
environment, offline.

Tests never reach the package index. ``python -m tests.wheelhouse fill`` (.ci/run runs it
after installing the dev lock) fills .wheelhouse/ in the checkout once, from the project's
own files, every file checked against its hash: the runtime dependencies as
requirements/service.lock.txt pins them; pytest and pytest-trio as the dev lock pins them
(what a generated project's tests need); and the build backend, hatchling with editables, as
requirements/build.lock.txt pins it (what builds voiceagent's wheel and a generated
project). It records what it was filled from: the locks' digests, and the Python and platform
the wheels are for. A test session builds voiceagent's wheel from the checkout and installs
with ``--no-index --find-links <wheelhouse>`` and pip's own configuration left out, so what
the tests install is exactly what is in the folder; a folder missing, or filled from other
locks, stops the tests that need it with the command that fills it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SERVICE_LOCK = ROOT / "requirements" / "service.lock.txt"
DEV_LOCK = ROOT / "requirements" / "dev.lock.txt"
BUILD_LOCK = ROOT / "requirements" / "build.lock.txt"
LOCKS = (SERVICE_LOCK, DEV_LOCK, BUILD_LOCK)
FOLDER = ROOT / ".wheelhouse"           # gitignored
FILL = "python -m tests.wheelhouse fill"
TEST_TOOLS = ("pytest", "pytest-trio")  # what a generated project's [test] extra asks for

# inside FOLDER
WHEELS = "wheels"                       # the only place offline installs look
TOOLS_LOCK = "test-tools.lock.txt"      # TEST_TOOLS and what they need, as the dev lock pins
RECORD = "filled-from.json"             # written last: a fill cut short reads as none


class WheelhouseUnusable(Exception):
    """The folder cannot serve this session's installs; the message says what to run."""


@dataclass(frozen=True)
class Wheelhouse:
    folder: Path                # the wheels
    wheel: Path                 # voiceagent's own, built from this checkout for the session
    test_tools_lock: Path

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


def offline_env() -> dict[str, str]:
    """This process's environment without pip's configuration (no PIP_* variable, no config
    file): a machine's mirror or find-links can neither serve nor hide a wheel the folder
    lacks."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1"}


def pip(*args: str, python: str | Path = sys.executable, timeout: float = 300) -> str:
    """Run pip offline (see offline_env); its output, or AssertionError with it."""
    result = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                            timeout=timeout, check=False, env=offline_env())
    assert result.returncode == 0, (f"pip {' '.join(args)}\n" + result.stdout[-3000:]
                                    + result.stderr[-4000:])
    return result.stdout


# ------------------------------------------------------------------------ filling the folder

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
    installed distributions' metadata (fill runs where the dev lock is installed)."""
    seen: set[str] = set()
    pending = [canonicalize_name(r) for r in roots]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            raise WheelhouseUnusable(
                f"{name} is not installed here: run `{FILL}` in the environment that has "
                f"the dev lock (python -m pip install --require-hashes -r "
                f"requirements/dev.lock.txt)") from None
        for spec in requires:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return seen


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def lock_digests(locks: Sequence[Path] = LOCKS) -> dict[str, str]:
    return {shown(lock): hashlib.sha256(lock.read_bytes()).hexdigest() for lock in locks}


def wheels_for() -> dict[str, str]:
    """The interpreter and platform whose wheels pip downloads (and these tests install)."""
    return {"python": f"{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]}",
            "platform": sysconfig.get_platform()}


def write_record(folder: Path, locks: Sequence[Path] = LOCKS) -> None:
    """What the fill depends on: a lock changed, or another Python, makes its wheels wrong."""
    files = sorted(path.name for path in (folder / WHEELS).iterdir())
    record = {"locks": lock_digests(locks), **wheels_for(), "files": files}
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def _download(wheels: Path, *locks: Path) -> None:
    """The one step that uses the package index, with pip configured as for any install."""
    args = ["download", "--quiet", "--dest", str(wheels), "--require-hashes"]
    for lock in locks:
        args += ["-r", str(lock)]
    result = subprocess.run([sys.executable, "-m", "pip", *args], text=True, check=False,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                                 "PIP_NO_INPUT": "1"})
    if result.returncode != 0:
        raise WheelhouseUnusable(f"pip {' '.join(args)} failed (exit {result.returncode}); "
                                 f"see its output above")


def fill(folder: Path = FOLDER) -> int:
    """Empty ``folder`` and fill it anew; how many files it holds."""
    (folder / RECORD).unlink(missing_ok=True)
    wheels = folder / WHEELS
    shutil.rmtree(wheels, ignore_errors=True)   # nothing from an older lock stays
    wheels.mkdir(parents=True)
    service = set(lock_entries(SERVICE_LOCK))
    dev = lock_entries(DEV_LOCK)
    needed = sorted(requirement_closure(TEST_TOOLS) - service)
    missing = [name for name in needed if name not in dev]
    if missing:
        raise WheelhouseUnusable(f"{missing}: not in {DEV_LOCK.name}; run requirements/lock.sh")
    tools_lock = folder / TOOLS_LOCK
    tools_lock.write_text("".join(entry + "\n" for name in needed for entry in dev[name]))
    _download(wheels, SERVICE_LOCK, tools_lock)
    _download(wheels, BUILD_LOCK)
    write_record(folder)
    return len(list(wheels.iterdir()))


# ------------------------------------------------------------------------ using the folder

def unusable(folder: Path = FOLDER, locks: Sequence[Path] = LOCKS) -> str | None:
    """Why ``folder`` cannot serve this session's installs, or None."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        return f"{shown(folder)} has not been filled"
    except (OSError, ValueError) as err:
        return f"{shown(folder / RECORD)} cannot be read ({err})"
    filled_from = record.get("locks", {})
    changed = [name for name, digest in lock_digests(locks).items()
               if filled_from.get(name) != digest]
    if changed:
        return f"{', '.join(changed)} changed since {shown(folder)} was filled"
    now = wheels_for()
    if {key: record.get(key) for key in now} != now:
        return (f"{shown(folder)} holds wheels for {record.get('python')} on "
                f"{record.get('platform')}, and the tests run on {now['python']} on "
                f"{now['platform']}")
    gone = [name for name in record.get("files", []) if not (folder / WHEELS / name).is_file()]
    if gone:
        return f"{len(gone)} of the files in {shown(folder / WHEELS)} are gone ({gone[0]}, ...)"
    return None


def open_wheelhouse(out: Path, folder: Path = FOLDER) -> Wheelhouse:
    """The filled ``folder``, with voiceagent's wheel built from this checkout into ``out``
    (offline: the build backend comes from the folder); WheelhouseUnusable if not filled."""
    problem = unusable(folder)
    if problem is not None:
        raise WheelhouseUnusable(
            f"the tests install voiceagent offline from a wheelhouse, and {problem}. Fill it "
            f"with `{FILL}` (from the checkout, where the dev lock is installed: it downloads "
            f"what requirements/*.lock.txt pin, hashes checked)")
    wheels = folder / WHEELS
    pip("wheel", "--no-deps", "--no-index", "--find-links", str(wheels), "--wheel-dir",
        str(out), str(ROOT))
    wheel, = out.glob("voiceagent-*.whl")
    return Wheelhouse(wheels, wheel, folder / TOOLS_LOCK)


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


def main(argv: Sequence[str]) -> int:
    if list(argv) != ["fill"]:
        print(f"usage: {FILL}", file=sys.stderr)
        return 2
    try:
        count = fill()
    except WheelhouseUnusable as err:
        print(f"tests.wheelhouse: {err}", file=sys.stderr)
        return 1
    print(f"{shown(FOLDER / WHEELS)}: {count} files, from "
          f"{', '.join(shown(lock) for lock in LOCKS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
