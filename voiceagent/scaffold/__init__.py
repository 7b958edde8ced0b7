"""A new agent project from the templates in ``templates/`` (``voiceagent init``).

The templates are package data, so they ship in the wheel and ``voiceagent init`` works from
any folder. Each is rendered with ``string.Template`` (``$name``, ``${package}``; a literal
dollar is ``$$``): no template engine, and an unknown placeholder is an error, not a blank.
What comes out is a project of its own that depends on voiceagent by name: one use case with
one tool and one DTMF handler (and ``scripted`` rules, so it runs offline), the tool's module,
tests that call the agent through the real server, settings, packaging, a Dockerfile, a
compose file and a README.
"""

from __future__ import annotations

import keyword
import re
import secrets
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from string import Template

from voiceagent import __version__
from voiceagent.errors import VoiceAgentError

# The base image of voiceagent's own Dockerfile (both stages): the project's image starts
# from the same bytes. tests/test_scaffold.py fails when the two differ, so moving the pin
# (docker/pin-base-image.sh) means copying it here too.
BASE_IMAGE = ("python:3.11.17-slim-bookworm@sha256:"
              "2333bd330d12de02514770b3585cad313644316047cdee24a7acfdece6de6efb")

NAME = re.compile(r"^[a-z][a-zA-Z0-9]*$|^[a-z][a-z0-9]*(_[a-z0-9]+)+$", re.ASCII)
MAX_NAME = 32                       # the longest lines the templates make stay under 100
# Package names that would shadow what the project needs: voiceagent's own packages and the
# project's own folders (and, checked apart, every module of Python's standard library).
TAKEN = {"voiceagent", "actors", "tests", "test", "config", "wheels", "conftest", "setup"}

# (template, where it goes); the path is a template too
FILES: tuple[tuple[str, str], ...] = (
    ("README.md.tmpl", "README.md"),
    ("pyproject.toml.tmpl", "pyproject.toml"),
    ("env.example.tmpl", ".env.example"),
    ("gitignore.tmpl", ".gitignore"),
    ("dockerignore.tmpl", ".dockerignore"),
    ("Dockerfile.tmpl", "Dockerfile"),
    ("docker-compose.yml.tmpl", "docker-compose.yml"),
    ("wheels.md.tmpl", "wheels/README.md"),
    ("package_init.py.tmpl", "${package}/__init__.py"),
    ("tools.py.tmpl", "${package}/tools.py"),
    ("usecase.yaml.tmpl", "config/usecases/${name}.yaml"),
    ("profiles.yaml.tmpl", "config/profiles.yaml"),
    ("test_agent.py.tmpl", "tests/test_${name}.py"),
)
DOTENV = ".env"          # written once, from .env.example, with a random local auth token


class ScaffoldError(VoiceAgentError):
    """The project cannot be created as asked (a bad name, a folder in use)."""


@dataclass(frozen=True, slots=True)
class Project:
    name: str             # the use case's name (lowerCamelCase or snake_case)
    package: str          # the Python package: snake_case of the name
    distribution: str     # the name pip knows it by: the package with hyphens
    title: str            # for people: "bikeShop" -> "Bike Shop"

    @classmethod
    def named(cls, name: str) -> Project:
        """Check ``name`` and derive the rest; ``ScaffoldError`` says what to change."""
        if not NAME.match(name) or len(name) > MAX_NAME:
            raise ScaffoldError(
                f"--name {name!r}: use lowerCamelCase or snake_case, a lower-case letter then "
                f"letters and digits, at most {MAX_NAME} characters (bikeShop, bike_shop)")
        package = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
        clash = ("is a Python keyword" if keyword.iskeyword(package)
                 else "is taken by voiceagent or the project's own folders" if package in TAKEN
                 else "is a module of Python's standard library"
                 if package in sys.stdlib_module_names else None)
        if clash:
            raise ScaffoldError(f"--name {name!r}: its package name {package!r} {clash}; "
                                "pick another name (myAgent, bike_shop)")
        words = package.split("_")
        return cls(name=name, package=package, distribution="-".join(words),
                   title=" ".join(word.capitalize() for word in words))


def name_for_folder(folder: Path) -> str | None:
    """The name ``init`` uses without --name: the folder's, as lowerCamelCase
    (``bike-shop`` -> ``bikeShop``); None when that is not a valid name."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", folder.resolve().name) if w]
    if not words:
        return None
    name = words[0][:1].lower() + words[0][1:] + "".join(w[:1].upper() + w[1:]
                                                        for w in words[1:])
    try:
        Project.named(name)
    except ScaffoldError:
        return None
    return name


def voiceagent_requirement() -> str:
    """``voiceagent>=X.Y.Z`` for the installed release: at least the version that made the
    project. (The ``voiceagent`` on PyPI is another project, at 0.0.x: the bound also keeps
    pip from taking it.)"""
    try:
        version = metadata.version("voiceagent")
    except metadata.PackageNotFoundError:
        version = __version__
    release = re.match(r"\d+(\.\d+)*", version)
    return f"voiceagent>={release.group(0) if release else __version__}"


def render(project: Project, target: Path, *, force: bool = False,
           auth_token: str | None = None) -> list[Path]:
    """Write the project into ``target`` (created if need be) and return the files written,
    relative to it. A ``target`` with anything in it but ``.git`` is refused unless ``force``,
    which replaces the template's files and leaves the rest. ``.env`` is written only when
    there is none."""
    if target.exists() and not target.is_dir():
        raise ScaffoldError(f"{target}: exists and is not a folder")
    if target.is_dir() and not force:
        present = sorted(p.name for p in target.iterdir() if p.name != ".git")
        if present:
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise ScaffoldError(f"{target}: not empty ({shown}); pick a new folder, or pass "
                                "--force to write the project's files into it anyway "
                                "(replacing files of the same names)")
    values = {"name": project.name, "package": project.package,
              "distribution": project.distribution, "title": project.title,
              "voiceagent_requirement": voiceagent_requirement(), "base_image": BASE_IMAGE}
    written: list[Path] = []
    for template, destination in FILES:
        relative = Path(Template(destination).substitute(values))
        _write(target / relative, Template(_template(template)).substitute(values))
        written.append(relative)
    dotenv = target / DOTENV
    if not dotenv.exists():
        token = auth_token or secrets.token_hex(16)
        example = (target / ".env.example").read_text(encoding="utf-8")
        _write(dotenv, re.sub(r"(?m)^TWILIO_AUTH_TOKEN=$", f"TWILIO_AUTH_TOKEN={token}",
                              example, count=1))
        written.append(Path(DOTENV))
    return written


def _template(name: str) -> str:
    return (resources.files(__name__) / "templates" / name).read_text(encoding="utf-8")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        out.write(text)
