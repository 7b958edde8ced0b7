"""The documents say what the code does: README's settings and metrics tables, the commands it
shows, and config/README.md's use-case keys, each compared with the code itself (Settings'
fields, the metrics registry and EMF lines, the argument parser, the use-case schema).

About 80 commits a week change the code and nothing else kept the documents in step. Every
list here is read from the code; the markdown is parsed simply: table rows start with ``|``,
and the names are the first column's backticked words.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shlex
import typing
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from actors.call import CallReport
from voiceagent.app import cli, heap
from voiceagent.app.dotenv_file import OTHER_NAMES
from voiceagent.app.metrics import Metrics
from voiceagent.app.open_connections import OpenConnections
from voiceagent.llm.bedrock import BedrockStatistics
from voiceagent.settings import Settings
from voiceagent.store.dynamodb_calls import ReadCounts
from voiceagent.store.write_behind import WriteBehindStatistics
from voiceagent.tools.registry import default_registry
from voiceagent.usecase_relay import (
    LANGUAGE_BUILDER_ATTRIBUTES,
    NOT_ATTRIBUTES,
    RELAY_BUILDER_ATTRIBUTES,
)
from voiceagent.usecases import ProfilesFile, UseCase

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIG_README = ROOT / "config" / "README.md"
USER_DOCS = [README, CONFIG_README, *sorted((ROOT / "docs").glob("*.md"))]
TICKED = re.compile(r"`([^`]+)`")
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


# ------------------------------------------------------------------------------- markdown


def _section(path: Path, heading: str) -> str:
    """From the line ``heading`` to the next heading of the same level or higher."""
    lines = path.read_text(encoding="utf-8").splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")
                and len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
    return "\n".join(lines[start:end])


def _tables(text: str, first_header: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header, rows) of each table whose first header cell is ``first_header``."""
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if block and block[0][0].lower() == first_header:
            yield block[0], [row for row in block[2:] if row]
        block = []


def _prose(path: Path) -> str:
    """The file without its fenced blocks, whose backticks would pair with the text's."""
    return re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)


def _fenced(text: str, language: str | None = None) -> list[str]:
    """The fenced code blocks (of ``language``, when given)."""
    fence = r"```(\w*)\n(.*?)```"
    return [body for lang, body in re.findall(fence, text, re.DOTALL)
            if language is None or lang == language]


# ------------------------------------------------------------------------------- settings


def _setting_rows() -> Iterator[tuple[str, list[str], list[str], str | None]]:
    """(table's first header, names, aliases, defaults cell) for each settings table row."""
    for header, rows in _tables(README.read_text(encoding="utf-8"), "variable"):
        column = header.index("default") if "default" in header else None
        for row in rows:
            aliases = re.findall(r"\(alias `([^`]+)`\)", row[0])
            named = TICKED.findall(re.sub(r"\(alias `[^`]+`\)", "", row[0]))
            names = [name.split("=")[0] for name in named]
            yield header[0], names, aliases, row[column] if column is not None else None


def _settings_by_name() -> dict[str, Any]:
    return {field.alias: field for field in Settings.model_fields.values() if field.alias}


def _as_documented(default: Any) -> str | None:
    """The code's default as the table writes it; None where the code leaves it unset (the
    table then says in words what happens, which no test can compare)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, tuple):
        return ", ".join(default)
    return str(default)


def test_every_setting_is_in_the_readme_tables() -> None:
    """A setting the tables leave out must be one README says is set for the user
    (`NAME` by whoever sets it), in the paragraph above the table."""
    listed = {name for _, names, aliases, _ in _setting_rows() for name in names + aliases}
    intro = _section(README, "### Settings").split("\n| ")[0]
    set_for_you = set(re.findall(r"`([A-Z][A-Z0-9_]*)` by ", intro))
    missing = sorted(set(_settings_by_name()) - listed - set_for_you)
    assert not missing, (
        f"voiceagent/settings.py reads {missing} but README.md's settings tables (### "
        "Settings, ### DynamoDB) do not list them: add a row (name, default, meaning)")


def test_every_setting_the_readme_lists_exists() -> None:
    """Settings' fields, or what voiceagent's set-up reads besides (dotenv_file.OTHER_NAMES:
    boto3's, the proxy's)."""
    known = set(_settings_by_name()) | OTHER_NAMES
    unknown = sorted({name for _, names, aliases, _ in _setting_rows()
                      for name in names + aliases if name not in known})
    assert not unknown, (
        f"README.md's settings tables list {unknown}, which nothing in voiceagent reads "
        "(not a Settings field in voiceagent/settings.py, nor in dotenv_file.OTHER_NAMES): "
        "remove the row, or fix the name")


def test_an_alias_the_readme_gives_sets_its_setting() -> None:
    fields = _settings_by_name()
    pairs = [(names[0], alias) for _, names, aliases, _ in _setting_rows() for alias in aliases]
    assert pairs, "README.md's settings table no longer gives any alias: drop this test"
    for name, alias in pairs:
        settings = Settings.from_env({alias: "from-the-alias", "VALIDATE_SIGNATURES": "false"})
        field = next(key for key, value in Settings.model_fields.items()
                     if value is fields[name])
        assert getattr(settings, field) == "from-the-alias", (
            f"README.md says {alias} is an alias of {name}, but Settings.from_env ignores it")


def test_the_readme_defaults_are_the_code_defaults() -> None:
    fields = _settings_by_name()
    wrong = []
    for _, names, _, cell in _setting_rows():
        if cell is None:                              # a table without a default column
            continue
        if len(names) == 1 or not cell:
            parts = [cell] * len(names)
        else:
            parts = [part.strip() for part in cell.split(",")]
        assert len(parts) == len(names), (
            f"README.md's row for {names} gives {len(parts)} defaults ({cell!r}): give one "
            "per name, in order, comma-separated (empty for none)")
        for name, part in zip(names, parts, strict=True):
            if name not in fields or (expected := _as_documented(fields[name].default)) is None:
                continue
            if part != (f"`{expected}`" if expected else ""):
                wrong.append(f"{name}: README.md says {part or 'nothing'}, "
                             f"voiceagent/settings.py `{expected}`")
    assert not wrong, "defaults in README.md's settings table differ from the code: " + "; ".join(
        wrong)


# ------------------------------------------------------------------------------- metrics


def _metrics(monkeypatch: pytest.MonkeyPatch) -> tuple[Metrics, io.StringIO]:
    """A Metrics over parts that report every family (Bedrock's, the GC's included), each
    labelled one with a sample (an error code, quantiles over a window)."""
    monkeypatch.setattr(heap, "gc_pauses", heap.GcPauses)
    bedrock = BedrockStatistics(
        streams_opened=1, streams_open=0, streams_completed=1, retries=0, cancellations=1,
        errors_by_code={"ThrottlingException": 1}, attempts_open=0, cancel_to_closed_s=(0.1,),
        cancel_to_exit_s=(0.1,), first_token_s=(0.5,))
    writer = WriteBehindStatistics(pending=0, written=0, failed=0, retries=0,
                                   oldest_pending_age_s=0.0, store_down=False)
    runtime: Any = SimpleNamespace(
        settings=Settings.from_env({"VALIDATE_SIGNATURES": "false", "METRICS_EMF": "true"}),
        calls=SimpleNamespace(active=0), draining=False,
        writer=SimpleNamespace(statistics=lambda: writer),
        llm=SimpleNamespace(statistics=lambda: bedrock), registry=default_registry(),
        connections=OpenConnections(4), store=SimpleNamespace(read_counts=ReadCounts()))
    stream = io.StringIO()
    return Metrics(runtime, emf_stream=stream), stream


def _feed(metrics: Metrics) -> None:
    """A figure for every labelled family the calls feed, through the calls' own entry
    points: a family's label names are read from its samples, and it has none before."""
    tool = default_registry().names()[0]
    metrics.on_turn({"kind": "caller", "latency_ms": 1, "first_token_ms_by_round": [1],
                     "overhead_ms": 1, "input_tokens": 1, "output_tokens": 1,
                     "cut_by": "barge-in", "model_error": "ModelThrottled",
                     "tools": [{"tool": tool, "duration_ms": 1, "status": "error"}]})
    report = CallReport()
    report.frames.rejected["oversized"] += 1
    report.tool_blocking.runs[tool] = 1
    metrics.on_call_finished(report)
    metrics.on_call_refused("capacity", "CA1")
    metrics.on_handoff("enqueue", "CA1")
    metrics.on_reconnect("resumed", "CA1")


def _series(metrics: Metrics) -> dict[str, tuple[str, ...]]:
    """Each family as /metrics names it (counters with ``_total``) -> its label names, as its
    samples carry them (a histogram's ``le`` left out)."""
    _feed(metrics)
    series = {}
    for family in metrics.registry.collect():
        assert family.samples, (
            f"{family.name} has no sample, so its labels cannot be read: give it a figure "
            "in _feed (or _metrics, for a family read at scrape time)")
        labels = dict.fromkeys(name for sample in family.samples for name in sample.labels
                               if name != "le")
        suffix = "_total" if family.type == "counter" else ""
        series[family.name + suffix] = tuple(labels)
    return series


def _expand(token: str) -> Iterator[tuple[str, tuple[str, ...] | None]]:
    """``a_{b,c{d}}`` -> (a_b, None), (a_c, (d,)); braces after ``_`` are alternatives, braces
    after a name are its labels (a selector's values left out: ``a{d="x"}`` -> (a, (d,)))."""
    match = re.search(r"_\{", token)
    if match is None:
        name, _, labels = token.partition("{")
        yield name, tuple(label.partition("=")[0] for label in labels.rstrip("}").split(",")
                          ) if labels else None
        return
    parts, depth, start = [], 0, match.end()
    for end in range(match.end(), len(token)):
        if token[end] in ",}" and depth == 0:
            parts.append(token[start:end])
            start = end + 1
            if token[end] == "}":
                break
        depth += {"{": 1, "}": -1}.get(token[end], 0)
    for part in parts:
        yield from _expand(token[:match.start() + 1] + part + token[start:])


def _documented_series() -> dict[str, tuple[str, ...] | None]:
    section = _section(README, "## Metrics and benchmarks")
    return {name: labels for _, rows in _tables(section, "metric") for row in rows
            for token in TICKED.findall(row[0]) for name, labels in _expand(token)}


def test_every_metric_is_in_the_readme_table(monkeypatch: pytest.MonkeyPatch) -> None:
    series = _series(_metrics(monkeypatch)[0])
    documented = _documented_series()
    missing = sorted(set(series) - set(documented))
    assert not missing, (f"voiceagent/app/metrics.py exposes {missing}, which README.md's "
                         "metrics table (## Metrics and benchmarks) does not list: add them")
    unknown = sorted(set(documented) - set(series))
    assert not unknown, (f"README.md's metrics table lists {unknown}, which /metrics does not "
                         "expose (voiceagent/app/metrics.py): fix or remove them")
    wrong = {name: (documented[name] or (), labels) for name, labels in series.items()
             if (documented[name] or ()) != labels}
    assert not wrong, ("README.md's metrics table gives these series other labels than the code "
                       f"(README, code): {wrong}")


def test_every_metric_the_documents_name_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """In prose too, anywhere a user reads: ``voiceagent_x`` for a counter exposed as
    ``voiceagent_x_total`` matches no series (a histogram's _count, _sum and _bucket do)."""
    series = _series(_metrics(monkeypatch)[0])
    samples = set(series) | {name + end for name in series
                             for end in ("_count", "_sum", "_bucket")}
    wrong = []
    for path in USER_DOCS:
        for token in TICKED.findall(_prose(path)):
            if not re.match(r"voiceagent_\w", token):
                continue
            for name, labels in _expand(token):
                if name not in samples:
                    wrong.append(f"{path.relative_to(ROOT)}: {name} (no such series)")
                elif labels is not None and name in series and labels != series[name]:
                    wrong.append(f"{path.relative_to(ROOT)}: {name}{{{','.join(labels)}}} "
                                 f"(its labels are {series[name]})")
    assert not wrong, "metrics named in the documents but not exposed: " + "; ".join(wrong)


def _emf_documents(metrics: Metrics, stream: io.StringIO) -> list[dict[str, Any]]:
    """Every kind of EMF line, with every figure it can carry."""
    metrics.on_turn({"kind": "caller", "latency_ms": 1, "first_token_ms": 1, "overhead_ms": 1,
                     "barge_in": True, "model_error": "ModelThrottled", "call_sid": "CA1"})
    metrics.on_call_refused("capacity", "CA1")
    metrics.on_handoff("enqueue", "CA1")
    metrics.on_reconnect("resumed_partial", "CA1")
    metrics.on_reconnect("refused_limit", "CA1")
    metrics.on_handoff("no_target", "CA1")
    metrics.emit_active_calls()
    return [yaml.safe_load(line) for line in stream.getvalue().splitlines()]


def test_every_emf_metric_is_in_the_readme(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = _emf_documents(*_metrics(monkeypatch))
    emitted = {m["Name"] for d in documents for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    literal = {str(node.values[0].value) for node in ast.walk(ast.parse(
        (ROOT / "voiceagent/app/metrics.py").read_text(encoding="utf-8")))
        if isinstance(node, ast.Dict) and node.keys and isinstance(node.keys[0], ast.Constant)
        and node.keys[0].value == "Name" and isinstance(node.values[0], ast.Constant)}
    assert literal <= emitted, (f"voiceagent/app/metrics.py emits {sorted(literal - emitted)} "
                                "from a path _emf_documents does not take: add it there")
    section = _section(README, "## Metrics and benchmarks")
    missing = sorted(emitted - set(TICKED.findall(section)))
    assert not missing, (f"voiceagent/app/metrics.py emits the EMF metrics {missing}, which "
                         "README.md (## Metrics and benchmarks) does not name: add them")
    emf = next(p for p in section.split("\n\n") if p.startswith("With `METRICS_EMF=true`"))
    keys = {key for d in documents for key in d}
    unknown = sorted({t for t in TICKED.findall(emf) if re.fullmatch(r"[A-Z][a-z]\w*", t)}
                     - keys)
    assert not unknown, (f"README.md's EMF paragraph names {unknown}, which no EMF line "
                         "carries (voiceagent/app/metrics.py): fix or remove them")


# ------------------------------------------------------------------------------- the CLI


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands(parser: argparse.ArgumentParser, path: str = "voiceagent") -> Iterator[str]:
    """Each command that runs something (``config load``; ``config`` alone only says which)."""
    for name, sub in _subparsers(parser).items():
        if _subparsers(sub):
            yield from _commands(sub, f"{path} {name}")
        else:
            yield f"{path} {name}"


def _shown_commands(text: str) -> Iterator[list[str]]:
    """The words after each ``voiceagent`` in code (a fenced block's lines, continued with
    ``\\``, or an inline span, which may wrap), up to a shell operator or a comment."""
    lines = [line for block in _fenced(text) for line in block.replace("\\\n", " ").splitlines()]
    lines += [span.replace("\n", " ")
              for span in TICKED.findall(re.sub(r"```.*?```", "", text, flags=re.DOTALL))]
    for line in lines:
        line = re.sub(r"\$\([^()]*\)", "X", line)        # $(pgrep -f "voiceagent serve")
        line = re.sub(r"(^|\s)#.*", "", line)                 # a shell comment
        for match in re.finditer(r"(?:^|[\s/])voiceagent(?=\s)(.*)", line):
            rest = re.split(r"\s(?:\||&&|;|>|2>)\s", match.group(1))[0]
            rest = rest.replace("[", " ").replace("]", " ")       # [--limit N]: optional
            try:
                yield shlex.split(rest)
            except ValueError:                                    # an apostrophe in prose
                yield rest.split()


def _parsers(parser: argparse.ArgumentParser, path: str = "voiceagent") -> Iterator[
        tuple[str, argparse.ArgumentParser]]:
    """Every command's parser, the groups' (``config``) and ``voiceagent``'s own included."""
    yield path, parser
    for name, sub in _subparsers(parser).items():
        yield from _parsers(sub, f"{path} {name}")


class Shown(typing.NamedTuple):
    path: str                              # the command the words name
    options: list[tuple[str, str]]         # (command, option) for each option given
    problem: str | None                    # what in them the parser does not know


def _check_shown(words: list[str], parser: argparse.ArgumentParser) -> Shown:
    """An option after a placeholder (``voiceagent COMMAND --help``) is every command's:
    its command is ``*``."""
    path, options = "voiceagent", []
    for word in words:
        commands = _subparsers(parser)
        if word.startswith("-"):
            option = word.split("=")[0]
            if path == "*":
                if not all(option in sub._option_string_actions for _, sub in _parsers(parser)):
                    return Shown(path, options, f"not every command has the option {option}")
            elif option not in parser._option_string_actions:
                return Shown(path, options, f"`{path}` has no option {option}")
            options.append((path, option))
        elif commands and ENV_NAME.fullmatch(word):
            path = "*"                            # COMMAND, a placeholder: any of them
        elif commands:
            if word not in commands:
                return Shown(path, options, f"`{path}` has no command {word!r}")
            path, parser = f"{path} {word}", commands[word]
    return Shown(path, options, None)


def test_the_commands_the_documents_show_exist() -> None:
    parser = cli._parser()
    wrong = []
    for doc in USER_DOCS:
        for words in _shown_commands(doc.read_text(encoding="utf-8")):
            problem = _check_shown(words, parser).problem
            if problem is not None:
                wrong.append(f"{doc.relative_to(ROOT)}: voiceagent {' '.join(words)}: {problem}")
    assert not wrong, "commands shown in the documents that the CLI refuses:\n" + "\n".join(
        wrong)


def test_every_command_is_in_the_readme() -> None:
    parser = cli._parser()
    shown = {_check_shown(words, parser).path
             for words in _shown_commands(README.read_text(encoding="utf-8"))}
    missing = sorted(set(_commands(parser)) - shown)
    assert not missing, (f"{missing}: the CLI has them (voiceagent/app/cli.py and the modules "
                         "it adds commands from), README.md never shows them: show each once")


def _sections(text: str) -> Iterator[str]:
    """The text from each heading to the next (a ``#`` line in a fenced block is a comment)."""
    section: list[str] = []
    fenced = False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced and section:
            yield "\n".join(section)
            section = []
        section.append(line)
    yield "\n".join(section)


def _documented_options(parser: argparse.ArgumentParser) -> set[tuple[str, str]]:
    """(command, option) for each option README.md gives a command it shows, or names in the
    same section: backticked in the text (`--json`) or in a shell comment of a code block
    (``# validate config/ (or --config-dir DIR)``). Two commands shown in one section share
    the options it names: they are documented next to each other."""
    documented = set()
    for section in _sections(README.read_text(encoding="utf-8")):
        shown = [_check_shown(words, parser) for words in _shown_commands(section)]
        documented |= {option for read in shown for option in read.options}
        prose = re.sub(r"```.*?```", "", section, flags=re.DOTALL)
        named = {token.split()[0].split("=")[0] for token in TICKED.findall(prose)
                 if token.startswith("-")}
        for block in _fenced(section):
            for comment in re.findall(r"(?:^|\s)#(.*)", block, re.MULTILINE):
                named |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", comment))
        documented |= {(read.path, option) for read in shown for option in named}
    return documented


# Options README.md need not name: each must say all there is to say in its --help line, and
# a comment here says why. Empty: every option so far changes what a user sees or gets.
SELF_EXPLANATORY: frozenset[tuple[str, str]] = frozenset()


def test_every_option_is_in_the_readme() -> None:
    """Every command's options, so one added to the CLI (``serve --env-file`` was, and was in
    --help only for a while) is documented where users read about the command."""
    parser = cli._parser()
    documented = _documented_options(parser)
    missing = []
    for path, command in _parsers(parser):
        for action in command._actions:
            names = action.option_strings
            if not names or any((path, name) in documented or ("*", name) in documented
                                or (path, name) in SELF_EXPLANATORY for name in names):
                continue
            missing.append(f"{path} {'/'.join(names)}")
    assert not missing, (
        f"the CLI has these options, which README.md neither shows with their command nor "
        f"names (backticked) in the section that shows it: {missing}; document each there "
        "(what it does, its default), or, if its --help line says all, add it to "
        "SELF_EXPLANATORY with a comment why")


# ------------------------------------------------------------------------------- use cases


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds, and how: ``one``, ``list`` (a tuple of) or ``map``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "one"
    if origin is tuple and args and isinstance(args[0], type) and issubclass(args[0],
                                                                             BaseModel):
        return args[0], "list"
    if origin is dict and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
        return args[-1], "map"
    if len(args) == 1:                                           # X | None
        return _model_of(args[0])
    return None, ""


def _schema_paths(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Every key path the schema accepts (``tools[].reply.interruptible``) -> its last key."""
    paths = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}{key}"
        paths[path] = key
        inner, how = _model_of(field.annotation)
        if inner is not None:
            mark = {"one": "", "list": "[]", "map": "{}"}[how]
            paths.update(_schema_paths(inner, f"{path}{mark}."))
    return paths


def _use_case_table() -> set[str]:
    names = set()
    for _, rows in _tables(CONFIG_README.read_text(encoding="utf-8"), "key"):
        names |= {name for row in rows for name in TICKED.findall(row[0])}
    return names


def _example_paths(data: Any, model: type[BaseModel], prefix: str = "") -> Iterator[
        tuple[str, str | None]]:
    """(path, problem or None) for each key of a YAML example, walked along the schema."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        path = f"{prefix}{key}"
        field = model.model_fields.get(key)
        if field is None:
            extra = model.model_config.get("extra") == "allow"
            yield path, None if extra else "unknown key"
            continue
        yield path, None
        if key == "relay" and model is UseCase:
            for attribute in value or {}:
                known = attribute in RELAY_BUILDER_ATTRIBUTES
                yield f"{path}.{attribute}", None if known else "not a relay attribute"
        inner, how = _model_of(field.annotation)
        if inner is None:
            continue
        items = [value] if how == "one" else list(
            (value or {}).values() if how == "map" else value or [])
        mark = {"one": "", "list": "[]", "map": "{}"}[how]
        for item in items:
            yield from _example_paths(item, inner, f"{path}{mark}.")


def _examples() -> list[tuple[Any, type[BaseModel]]]:
    found: list[tuple[Any, type[BaseModel]]] = []
    for block in _fenced(CONFIG_README.read_text(encoding="utf-8"), "yaml"):
        data = yaml.safe_load(block)
        found.append((data, ProfilesFile if "profiles" in data else UseCase))
    return found


def test_every_use_case_key_is_in_config_readme() -> None:
    """A key has a row of its own in the table (``dtmf.max_digits``), or its parent has one
    (``tools``, ``scripted``) and the key is used at its place in an example or named in the
    text."""
    table = _use_case_table()
    used = {re.sub(r"\[\]|\{\}", "", path) for data, model in _examples()
            for path, _ in _example_paths(data, model)}
    ticked = {word.split(":")[0].strip() for word in TICKED.findall(_prose(CONFIG_README))}
    profile = _model_of(ProfilesFile.model_fields["profiles"].annotation)[0]
    assert profile is not None
    paths = {**_schema_paths(UseCase),
             **{f"profiles[].{p}": k for p, k in _schema_paths(profile).items()}}
    missing = []
    for path, key in paths.items():
        plain = re.sub(r"\[\]|\{\}", "", path)
        parents = [".".join(plain.split(".")[:i]) for i in range(1, plain.count(".") + 1)]
        if plain in table or any(name.startswith(plain + ".") for name in table):
            continue
        if (path.startswith("profiles") or any(p in table for p in parents)) and (
                plain in used or key in ticked):
            continue
        missing.append(path)
    assert not missing, (f"the use-case schema (voiceagent/usecases.py, usecase_*.py) accepts "
                         f"{missing}, which config/README.md does not document: give it a row "
                         "in the table, or, under a row for its parent, use it in an example")


def test_config_readme_names_no_key_the_schema_refuses() -> None:
    paths = {re.sub(r"\[\]|\{\}", "", p) for p in _schema_paths(UseCase)}
    unknown = sorted(name for name in _use_case_table() if name not in paths)
    for data, model in _examples():
        unknown += [f"{path} ({problem}, in a yaml example)"
                    for path, problem in _example_paths(data, model) if problem is not None]
    languages = [code for data, _ in _examples() for entry in data.get("languages") or []
                 for code in entry if code not in NOT_ATTRIBUTES
                 and code not in LANGUAGE_BUILDER_ATTRIBUTES]
    unknown += [f"languages[].{name} (not a <Language> attribute)" for name in languages]
    assert not unknown, (f"config/README.md names {unknown}, which the use-case schema "
                         "(voiceagent/usecases.py, usecase_*.py) refuses: fix or remove them")
