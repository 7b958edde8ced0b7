"""The names and places the documents give exist: each backticked UPPER_CASE name (a setting,
a variable a script reads, a constant the text points at), each path into this repository and
each relative link, its ``#anchor`` included; and README's table of benchmarks has a row for
each script in benchmarks/, naming only options they take; config/README.md names every
built-in tool.

test_docs_match_code compares the settings and metrics tables and the commands with the code;
the prose around them was compared with nothing. A name there that a rename left behind
(`MAX_CALL` for `MAX_CALLS`), a module moved, or a heading retitled under a link's anchor sends
a reader at 3 a.m. after something that is not there. Markdown is read as in
test_docs_match_code: backticked spans outside fenced blocks, and, inside them, only
``NAME=value`` (what a user copies into a shell or `.env`).
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.test_docs_match_code import (
    CONFIG_README,
    README,
    ROOT,
    TICKED,
    USER_DOCS,
    _fenced,
    _prose,
    _section,
    _tables,
)
from voiceagent.app.dotenv_file import OTHER_NAMES
from voiceagent.settings import Settings
from voiceagent.tools.registry import default_registry

pytestmark = pytest.mark.timeout(60)

UPPER = re.compile(r"(?<![\w$<])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b")   # MAX_CALLS, not HTTP
ASSIGNED = re.compile(r"(?<![\w$<])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)=")  # STORE=dynamodb
# Where a name may come from besides Settings: Python (names and strings: a constant, an
# environment variable read with os.environ, a socket option, a prompt placeholder), and the
# scripts and templates a user runs (their variables, their allowed values)
PYTHON_SOURCES = ("voiceagent", "actors", "tests/conftest.py")
OTHER_SOURCES = ("sam", "docker", ".ci/run", "docker-compose.yml", "Dockerfile",
                 ".env.example")
# Top folders of this repository: a backticked path starting with one is a path in it. Paths
# under tests/ and config/ are also the layout of a user's own project in docs/ (`voiceagent
# init` makes both), so those are checked in README.md only.
REPO_FOLDERS = ("voiceagent", "actors", "sam", "docker", "benchmarks", "requirements", "docs",
                ".ci")
README_ONLY_FOLDERS = ("tests", "config")
# `name.py` alone: a file somewhere in the repository, except these, which are not ours
NOT_OUR_FILES = frozenset({
    "proxy.py",                    # the PyPI package the proxy tests run, named for its module
})
PATH = re.compile(r"[\w.*-]+(?:/[\w.*-]+)*/?")


@cache
def _known_names() -> frozenset[str]:
    names = {field.alias for field in Settings.model_fields.values() if field.alias}
    names |= OTHER_NAMES
    for source in PYTHON_SOURCES:
        path = ROOT / source
        for module in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Name):
                    names.add(node.id)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names.update(UPPER.findall(node.value))
    for source in OTHER_SOURCES:
        path = ROOT / source
        for file in [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                          if p.is_file()):
            names.update(UPPER.findall(file.read_text(encoding="utf-8", errors="replace")))
    return frozenset(names)


def _names_given(path: Path) -> Iterator[str]:
    for span in TICKED.findall(_prose(path)):
        yield from UPPER.findall(span)
    for block in _fenced(path.read_text(encoding="utf-8")):
        yield from ASSIGNED.findall(block)


def test_every_upper_case_name_the_documents_give_exists() -> None:
    known = _known_names()
    wrong = sorted({f"{path.relative_to(ROOT)}: {name}" for path in USER_DOCS
                    for name in _names_given(path) if name not in known})
    assert not wrong, (
        "the documents name these, which nothing in voiceagent reads or defines (not a "
        "setting in voiceagent/settings.py nor in dotenv_file.OTHER_NAMES, no constant or "
        "string in voiceagent/ or actors/, no variable of sam/, docker/ or .ci/run): "
        f"{wrong}; fix the name (was it renamed?) or remove it")


# ------------------------------------------------------------------------------- places


@cache
def _tracked_files() -> frozenset[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True, timeout=30).stdout.split()
    return frozenset(listed)


def _exists(relative: str) -> bool:
    """A file or folder in the checkout (``*`` as a glob: ``tests/test_usecase_*.py``)."""
    if "*" in relative:
        return any(ROOT.glob(relative))
    return (ROOT / relative).exists()


def _paths_given(path: Path) -> Iterator[str]:
    folders = REPO_FOLDERS + (README_ONLY_FOLDERS if path.name == "README.md"
                              and path.parent == ROOT else ())
    for span in TICKED.findall(_prose(path)):
        for word in span.split():
            word = word.strip("(),;:'\"")
            in_repo = "/" in word and word.split("/")[0] in folders
            if PATH.fullmatch(word) and (in_repo or ("/" not in word and word.endswith(".py"))):
                yield word


def test_every_repository_path_the_documents_give_exists() -> None:
    """``voiceagent/app/web.py`` must exist; ``web.py`` alone must be some file's name."""
    basenames = {Path(name).name for name in _tracked_files()}
    wrong = []
    for doc in USER_DOCS:
        for given in _paths_given(doc):
            if "/" in given:
                found = _exists(given)
            else:
                found = given in NOT_OUR_FILES or given in basenames or "*" in given
            if not found:
                wrong.append(f"{doc.relative_to(ROOT)}: {given}")
    assert not wrong, (f"the documents give these paths, which the repository does not have: "
                       f"{sorted(set(wrong))}; was the file moved or renamed?")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for a markdown file's headings: lower case, punctuation dropped,
    spaces to hyphens, ``-1``, ``-2`` after a repeated one."""
    anchors, seen = set(), dict[str, int]()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        if fenced or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_every_relative_link_and_anchor_resolves() -> None:
    wrong = []
    for doc in USER_DOCS:
        for link in re.findall(r"\]\(([^)\s]+)\)", _prose(doc)):
            if re.match(r"[a-z]+:", link):                         # https:, mailto:
                continue
            target_name, _, anchor = link.partition("#")
            target = (doc.parent / target_name).resolve() if target_name else doc
            if not target.exists():
                wrong.append(f"{doc.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                wrong.append(f"{doc.relative_to(ROOT)}: {link} (no heading with that anchor "
                             f"in {target.relative_to(ROOT)})")
    assert not wrong, "links in the documents that lead nowhere: " + "; ".join(wrong)


# ------------------------------------------------------------------------------- benchmarks


def _benchmark_rows() -> dict[str, str]:
    """README's benchmarks table: script -> the rest of its row."""
    section = _section(README, "## Metrics and benchmarks")
    return {TICKED.findall(row[0])[0]: " | ".join(row[1:])
            for _, rows in _tables(section, "script") for row in rows}


def test_every_benchmark_is_in_the_readme_table() -> None:
    """bench_history.py and bench_workers_health.py had results in benchmarks/RESULTS.md and
    no row, so a reader of README never learnt they exist."""
    scripts = {path.name for path in (ROOT / "benchmarks").glob("bench_*.py")}
    missing = sorted(scripts - set(_benchmark_rows()))
    assert not missing, (f"benchmarks/ has {missing}, which README.md's table of benchmarks "
                         "(## Metrics and benchmarks: | script | measures |) does not list: "
                         "add a row saying what each measures")


def test_the_benchmark_table_names_only_scripts_and_options_that_exist() -> None:
    """An option a row names must be one a benchmark script takes (``before_after.py``'s row
    shows it running ``bench_bedrock.py --streams``, so any script of benchmarks/ counts)."""
    sources = "\n".join(path.read_text(encoding="utf-8")
                        for path in sorted((ROOT / "benchmarks").glob("*.py")))
    wrong = []
    for script, row in _benchmark_rows().items():
        if not (ROOT / "benchmarks" / script).is_file():
            wrong.append(f"{script} (no such script in benchmarks/)")
            continue
        for option in sorted(set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", row))):
            if f'"{option}"' not in sources:
                wrong.append(f"{script}: {option} (no benchmark script takes it)")
    assert not wrong, f"README.md's table of benchmarks names what does not exist: {wrong}"


def test_config_readme_names_every_built_in_tool() -> None:
    """Its list of the built-in tools a use case may declare left out the three that act on
    the call (playAudio, sendDigits, setSpeechHints): a use-case writer never learnt of them."""
    ticked = set(TICKED.findall(_prose(CONFIG_README)))
    missing = sorted(set(default_registry().names()) - ticked)
    assert not missing, (f"voiceagent's built-in tools {missing} are not named in "
                         "config/README.md: add each, with its inputs, to the list of built-in "
                         "tools under the use-case keys")
