"""``voiceagent config``, ``voiceagent calls`` and ``voiceagent store``: the state behind the
service, from a terminal or a deploy step.

Every command reads its settings from the environment and ``./.env`` like ``serve`` (STORE,
TABLE_NAME, AWS_REGION, DATA_DIR, CONFIG_DIR, ...) and opens the same store the service uses.
None of them talks to Twilio, so none needs TWILIO_AUTH_TOKEN. Output goes to stdout; a domain
error is one line on stderr and exit code 2 (``cli.main`` prints ConfigError, SettingsError,
StoreError).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import trio
import yaml
from pydantic import BaseModel

import voiceagent.store.config_records as config_records
from voiceagent import logs
from voiceagent.app import transcripts
from voiceagent.app.dotenv_file import load_dotenv_file
from voiceagent.app.open_backends import open_store
from voiceagent.catalog import ConfigSet, read_config_dir, write_config
from voiceagent.errors import ConfigError
from voiceagent.logs import mask_phone
from voiceagent.settings import Settings
from voiceagent.tools.plugins import build_registry
from voiceagent.usecases import Profile, UseCase

STORE_THREADS = 8
EXPORT_HEADER = ("# Exported by `voiceagent config export`; edit it, then "
                 "`voiceagent config load`.\n")
DEFAULT_EXPORT_DIR = Path("config-export")
LINE_WIDTH = 10_000                 # long values stay on one line, as in config/ itself


def add_commands(commands: Any) -> None:
    """Add the subcommands to ``voiceagent``'s subparsers (``argparse._SubParsersAction``)."""
    config = commands.add_parser(
        "config", help="use cases and profiles in the store",
        description="Use cases and profiles in the store the settings name (STORE: the "
                    "embedded SQLite file, or the DynamoDB table).")
    config_commands = config.add_subparsers(dest="config_command", required=True,
                                             metavar="{load,list,show,export}")
    load = config_commands.add_parser(
        "load", help="validate config/ and write it to the store (idempotent)",
        description="Check every file of config/ against the registered tools, then write "
                    "the use cases and profiles to the store; nothing is written when a "
                    "file is wrong. Says per item whether it was created, changed or "
                    "unchanged.")
    load.add_argument("--config-dir", type=Path, default=None,
                      help="folder laid out like config/ (default: $CONFIG_DIR, from the "
                           "environment or ./.env, else ./config, else voiceagent's examples)")
    load.set_defaults(run=_config_load)
    listing = config_commands.add_parser(
        "list", help="use cases and profiles, one line each",
        description="The store's use cases and profiles, one line each.")
    listing.set_defaults(run=_config_list)
    show = config_commands.add_parser(
        "show", help="one use case as YAML",
        description="One use case from the store, as YAML laid out like config/usecases/.")
    show.add_argument("name", help="the use case's name")
    show.set_defaults(run=_config_show)
    export = config_commands.add_parser(
        "export", help="write the store's use cases and profiles as YAML files like config/",
        description="Write the store's use cases and profiles as YAML files laid out like "
                    "config/. Earlier exports there are replaced; files you wrote are not, "
                    "unless --force (comments are not kept).")
    export.add_argument("--out", type=Path, default=DEFAULT_EXPORT_DIR,
                        help=f"folder to write (default: ./{DEFAULT_EXPORT_DIR})")
    export.add_argument("--force", action="store_true",
                        help="replace files not written by an export (your config/ itself: "
                             "their comments are lost)")
    export.set_defaults(run=_config_export)

    calls = commands.add_parser(
        "calls", help="recorded calls and their transcripts",
        description="Calls recorded in the store, and what was said in them (phone numbers "
                    "masked).")
    calls_commands = calls.add_subparsers(dest="calls_command", required=True,
                                           metavar="{list,show}")
    recent = calls_commands.add_parser(
        "list", help="recent calls, newest first",
        description="Recent calls, newest first: CallSid, start, use case, caller (masked), "
                    "messages.")
    recent.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    recent.set_defaults(run=_calls_list)
    one = calls_commands.add_parser(
        "show", help="one call, turn by turn",
        description="One call turn by turn: who spoke when, what the caller heard where a "
                    "barge-in cut the agent, and each tool's input and result.")
    one.add_argument("call_sid", metavar="CALLSID",
                     help="the call's CallSid (CA...), as `voiceagent calls list` shows it")
    one.set_defaults(run=_calls_show)

    store = commands.add_parser("store", help="the store itself",
                                description="The store itself (STORE, TABLE_NAME).")
    store_commands = store.add_subparsers(dest="store_command", required=True,
                                           metavar="{init}")
    init = store_commands.add_parser(
        "init", help="create the DynamoDB table (or the SQLite file) if it does not exist",
        description="Create the DynamoDB table with its index and TTL (or the SQLite file) "
                    "if it does not exist; an existing one is checked (its TTL switched on "
                    "if off).")
    init.set_defaults(run=_store_init)


# ------------------------------------------------------------------ plumbing


def _settings() -> Settings:
    """The service's settings, minus the Twilio token: these commands never see Twilio.
    ``./.env`` is read first, as ``serve`` reads it, so a deploy step run in the project's
    folder (``config load``) sees the same CONFIG_DIR and TOOLS as the service."""
    load_dotenv_file()
    settings = Settings.from_env(VALIDATE_SIGNATURES=False)
    logs.configure(settings.log_format,
                   "WARNING" if settings.log_level == "INFO" else settings.log_level,
                   content=settings.log_content)
    return settings


# ------------------------------------------------------------------ config


def _config_load(args: argparse.Namespace) -> int:
    settings = _settings()
    folder = args.config_dir or settings.resolved_config_dir
    # ConfigError, one line: the tool module, or the use case's file and key path
    config = read_config_dir(folder, build_registry(settings))
    trio.run(_load, settings, config, folder)
    return 0


async def _load(settings: Settings, config: ConfigSet, folder: Path) -> None:
    async with open_store(settings) as store:
        outcome = await write_config(store, config)
        known_use_cases = {u.name for u in config.use_cases}
        known_profiles = {p.phone for p in config.profiles}
        extra_use_cases = [i["pk"] for i in await store.query_index(config_records.USE_CASE_INDEX)
                           if i["pk"] not in known_use_cases]
        extra_profiles = [i["pk"] for i in await store.query_index(config_records.PROFILE_INDEX)
                          if i["pk"] not in known_profiles]
    for use_case in config.use_cases:
        print(f"use case {use_case.name}: "
              f"{outcome[f'{config_records.USE_CASE_SK}:{use_case.name}']}")
    for profile in config.profiles:
        print(f"profile {mask_phone(profile.phone)}: "
              f"{outcome[f'{config_records.PROFILE_SK}:{profile.phone}']}")
    for name in extra_use_cases:
        print(f"use case {name}: kept (in the store, not in {folder})")
    for phone in extra_profiles:
        print(f"profile {mask_phone(phone)}: kept (in the store, not in {folder})")
    counts = Counter(outcome.values())
    print(f"{len(outcome)} items in {store.name}: {counts['created']} created, "
          f"{counts['updated']} updated, {counts['unchanged']} unchanged")


def _config_list(args: argparse.Namespace) -> int:
    return trio.run(_list, _settings())


async def _list(settings: Settings) -> int:
    async with open_store(settings, create=False) as store:
        use_case_items = await store.query_index(config_records.USE_CASE_INDEX)
        profile_items = await store.query_index(config_records.PROFILE_INDEX)
    code = 0
    for item in use_case_items:
        try:
            use_case = config_records.use_case_from_item(item)
        except ConfigError as err:
            print(f"use case {item['pk']}: unreadable: {err}")
            code = 1
            continue
        model = use_case.model or "default model"
        print(f"use case {use_case.name}: {use_case.title or '(no title)'} "
              f"({_count(len(use_case.tools), 'tool')}, "
              f"{_count(len(use_case.dtmf.handlers), 'key')}, {model})")
    for item in profile_items:
        try:
            profile = config_records.profile_from_item(item)
        except ConfigError as err:
            print(f"profile {mask_phone(str(item['pk']))}: unreadable: {err.problem}")
            code = 1
            continue
        name = f"{profile.first_name} {profile.last_name}".strip() or "(no name)"
        print(f"profile {mask_phone(profile.phone)}: {name}, "
              f"use case {profile.use_case or '(STACK_USE_CASE)'}")
    if not use_case_items and not profile_items:
        print(f"nothing in {store.name}; load config/ with `voiceagent config load`")
    return code


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _config_show(args: argparse.Namespace) -> int:
    return trio.run(_show, _settings(), args.name)


async def _show(settings: Settings, name: str) -> int:
    async with open_store(settings, create=False) as store:
        item = await store.get(name, config_records.USE_CASE_SK)
        if item is None:
            names = [i["pk"] for i in await store.query_index(config_records.USE_CASE_INDEX)]
            print(f"voiceagent: no use case {name!r} in {store.name}; there are: "
                  f"{', '.join(names) or 'none'}", file=sys.stderr)
            return 2
    sys.stdout.write(dump_yaml(exportable(config_records.use_case_from_item(item))))
    return 0


def _config_export(args: argparse.Namespace) -> int:
    return trio.run(partial(_export, _settings(), args.out, force=args.force))


async def _export(settings: Settings, out: Path, *, force: bool = False) -> int:
    async with open_store(settings, create=False) as store:
        use_cases = [config_records.use_case_from_item(item)
                     for item in await store.query_index(config_records.USE_CASE_INDEX)]
        profiles = [config_records.profile_from_item(item)
                    for item in await store.query_index(config_records.PROFILE_INDEX)]
    files = export_files(use_cases, profiles)
    own = [out / path for path in files if _hand_written(out / path)]
    if own and not force:
        more = f" and {len(own) - 1} more" if len(own) > 1 else ""
        print(f"voiceagent: {own[0]}{more}: not written by an export; replacing would lose "
              "what the store does not keep (comments, layout). Choose another --out, or "
              "pass --force", file=sys.stderr)
        return 2
    for path, text in files.items():
        target = out / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except OSError as err:              # a file where a folder goes, no permission, ...
            print(f"voiceagent: cannot write {err.filename or target}: "
                  f"{err.strerror or err}; choose another --out", file=sys.stderr)
            return 2
        print(f"wrote {target}")
    print(f"{_count(len(use_cases), 'use case')} and {_count(len(profiles), 'profile')} "
          f"from {store.name}")
    return 0


def _hand_written(path: Path) -> bool:
    """A file there that an export did not write (it lacks the header): someone's config/."""
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            return file.read(len(EXPORT_HEADER)) != EXPORT_HEADER
    except OSError:             # none there, or not a file (no permission): the write says so
        return False


def export_files(use_cases: list[UseCase], profiles: list[Profile]) -> dict[str, str]:
    """Relative path -> YAML text, laid out like config/ and the same bytes every time."""
    files = {f"usecases/{u.name}.yaml": EXPORT_HEADER + dump_yaml(exportable(u))
             for u in sorted(use_cases, key=lambda u: u.name)}
    files["profiles.yaml"] = EXPORT_HEADER + dump_yaml(
        {"profiles": [exportable(p) for p in sorted(profiles, key=lambda p: p.phone)]})
    return files


def exportable(value: Any) -> Any:
    """A model as YAML-ready data: its fields in declared order, defaults left out, then its
    extras (a language's TwiML attributes) sorted, and free-form maps (relay attributes,
    schemas) sorted, since a DynamoDB map has no order."""
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        for name, field in type(value).model_fields.items():
            current = getattr(value, name)
            if (not field.is_required()
                    and current == field.get_default(call_default_factory=True)):
                continue
            out[field.alias or name] = exportable(current)
        extra = value.model_extra or {}
        out |= {key: exportable(extra[key]) for key in sorted(extra)}
        return out
    if isinstance(value, Mapping):
        return {str(key): exportable(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [exportable(element) for element in value]
    return value


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (prompts) as literal blocks, so the file reads like the source."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                   style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     width=LINE_WIDTH, default_flow_style=False)


# ------------------------------------------------------------------ calls


def _calls_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("voiceagent: --limit must be at least 1", file=sys.stderr)
        return 2
    return trio.run(_recent, _settings(), args.limit)


async def _recent(settings: Settings, limit: int) -> int:
    async with open_store(settings, create=False) as store:
        calls = await transcripts.recent_calls(store, limit=limit)
    if not calls:
        print(f"no calls in {store.name}")
        return 0
    print("\n".join(transcripts.format_calls(calls, settings.time_zone)))
    return 0


def _calls_show(args: argparse.Namespace) -> int:
    return trio.run(_transcript, _settings(), args.call_sid)


async def _transcript(settings: Settings, call_sid: str) -> int:
    async with open_store(settings, create=False) as store:
        transcript = await transcripts.load_transcript(store, call_sid)
    if transcript is None:
        print(f"voiceagent: no call {call_sid} in {store.name} (items expire after "
              "SESSION_TTL_S)", file=sys.stderr)
        return 2
    print("\n".join(transcripts.format_transcript(transcript, settings.time_zone)))
    return 0


# ------------------------------------------------------------------ store


def _store_init(args: argparse.Namespace) -> int:
    return trio.run(_init, _settings())


async def _init(settings: Settings) -> int:
    if settings.store == "sqlite":
        async with open_store(settings) as store:
            print(f"{store.name} is ready (SQLite creates its file and schema on first use)")
        return 0
    from voiceagent.store.dynamodb import open_dynamodb_store
    async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(STORE_THREADS),
                                   check_table=False) as store:
        await store.ensure_table(report=lambda line: print(line, flush=True))
        print(f"{store.name} at {store.endpoint} is ready")
    return 0
