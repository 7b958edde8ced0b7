"""``voiceagent check``: the use cases against the tools this process registers.

``serve`` refuses to start on a TOOLS module that does not import or a use case that names a
tool nobody registered; a check that only looked at Bedrock passed such a config whenever
LLM=scripted (what ``voiceagent init`` writes). This step builds the registry as ``serve``
does and checks what the service will read: the table's use cases (STORE=dynamodb, read by
the store check), else CONFIG_DIR. The model check then asks the models these use cases name.
It also notes, without failing, the tools that can leave a caller in silence (no ``filler``).
"""

from __future__ import annotations

from functools import partial

from voiceagent.app.check_steps import CheckContext, Outcome, failed, passed
from voiceagent.catalog import read_config_dir
from voiceagent.errors import ConfigError
from voiceagent.settings import Settings
from voiceagent.threads import run_blocking
from voiceagent.tools.plugins import build_registry
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import UseCase

NAME = "use cases and tools"
# a filler is said once a tool has run 1 s (actors.tool_filler.FILLER_AFTER_S); a tool whose
# limit is longer than this can hold a caller in a silence that makes them ask "hello?"
SILENCE_NOTE_OVER_S = 3.0
FIX_ADVICE = ("fix that file (config/README.md lists every key) or tool module "
              "(docs/tools.md), or point CONFIG_DIR at a folder laid out like config/")
# the tools fail before any file is read: YAML keys and CONFIG_DIR are beside the point
TOOLS_ADVICE = ("fix TOOLS (module names, comma-separated, each importable: an installed "
                "package, or a folder on PYTHONPATH, as PYTHONPATH=. for one beside config/) "
                "or the module it names (docs/tools.md, \"When something is wrong\")")
ENTRY_POINT_ADVICE = ("fix or uninstall the package whose voiceagent.tools entry point it is "
                      "(docs/tools.md, \"Entry points\")")


async def config_check(ctx: CheckContext) -> list[Outcome]:
    settings = ctx.settings
    try:
        registry = await run_blocking(partial(build_registry, settings), limiter=ctx.limiter)
    except ConfigError as err:
        advice = ENTRY_POINT_ADVICE if err.path.startswith("entry point") else TOOLS_ADVICE
        return [failed(NAME, f"the tools do not load: {err}", advice)]
    if ctx.stored_use_cases is not None:            # STORE=dynamodb: what the service reads
        return [_stored_outcome(ctx, registry, ctx.stored_use_cases)]
    try:
        config = await run_blocking(partial(read_config_dir, settings.resolved_config_dir,
                                            registry), limiter=ctx.limiter)
    except ConfigError as err:
        return [failed(NAME, f"cannot read the use cases: {err}", FIX_ADVICE)]
    ctx.use_cases, ctx.use_cases_from = config.use_cases, str(settings.resolved_config_dir)
    names = sorted(u.name for u in config.use_cases)
    if settings.store == "sqlite" and settings.stack_use_case not in names:
        return [failed(NAME, f"no use case {settings.stack_use_case!r} (STACK_USE_CASE) in "
                             f"{ctx.use_cases_from}; calls would hear an apology",
                       f"set STACK_USE_CASE to one of: {', '.join(names) or '(none)'}")]
    where = ("" if settings.store == "sqlite"
             else " (the table was not read: checked what `voiceagent config load` writes)")
    return [passed(NAME, _summary(config.use_cases, ctx.use_cases_from, registry, settings)
                   + where,
                   *_silences(config.use_cases, registry, "in its use case's file"))]


def _stored_outcome(ctx: CheckContext, registry: ToolRegistry,
                    use_cases: tuple[UseCase, ...]) -> Outcome:
    """The table's use cases may name tools this image does not register (a tool added
    to config/ and loaded, but the image not rebuilt): every such call would fail."""
    ctx.use_cases, ctx.use_cases_from = use_cases, "the table"
    problems, notes = [], []
    for use_case in use_cases:
        try:
            # as the service reads it (Catalog): a keyword JSON Schema does not define is no
            # reason to refuse its calls, only something to fix when config is next loaded
            registry.check_use_case(use_case, keywords=False)
        except ConfigError as err:
            problems.append(f"use case {use_case.name}: {err.key_path}: {err.problem}")
            continue
        try:
            registry.check_use_case(use_case)
        except ConfigError as err:
            notes.append(f"use case {use_case.name}: {err.key_path}: {err.problem}")
    if problems:
        return failed(NAME, f"{len(problems)} use case(s) in the table do not fit the tools "
                            "this process registers", *problems,
                      "register the tools (TOOLS, or the image's installed plugins), or fix "
                      "the use case in config/ and run `voiceagent config load`")
    note = ("; served, but `voiceagent config load` would refuse: " + "; ".join(notes)
            if notes else "")
    return passed(NAME, _summary(use_cases, "the table", registry, ctx.settings) + note,
                  *_silences(use_cases, registry,
                             "in config/, then run `voiceagent config load`"))


def _summary(use_cases: tuple[UseCase, ...], source: str, registry: ToolRegistry,
             settings: Settings) -> str:
    """Where the use cases are comes first: after "registered" it read as where the tools
    were registered ("all among the 11 registered in config")."""
    named = sorted({t.name for u in use_cases for t in u.tools})
    extra = f", TOOLS={','.join(settings.tools_modules)}" if settings.tools_modules else ""
    return (f"{len(use_cases)} use case(s) in {source} naming {len(named)} tool(s), all "
            f"among the {len(registry.names())} registered{extra}")


def _silences(use_cases: tuple[UseCase, ...], registry: ToolRegistry, where: str
              ) -> tuple[str, ...]:
    """Notes (not a failure: a tool may well answer fast), one line each, on the tools a
    model can call without a word first and that may run past ``SILENCE_NOTE_OVER_S`` with
    no ``filler``: the caller hears nothing until the tool ends, up to its timeout. Left out:
    tools that end the call (they cannot have a filler: the model says goodbye itself),
    tools that play audio themselves (``plays_audio``: their sound fills the wait) and tools
    that answer at once (``instant``, as ``switchLanguage``: its limit is a guard, no wait;
    listed, it was given a shorter limit to quiet the note, or a filler said in the language
    being left)."""
    found: list[str] = []
    for use_case in use_cases:
        silent = []
        for declaration in use_case.tools:
            definition = registry.get(declaration.name)
            if (definition is None or definition.ends_turn or definition.plays_audio
                    or definition.instant or declaration.filler is not None):
                continue
            limit_s = declaration.timeout_s or definition.timeout_s   # as the executor runs it
            if limit_s > SILENCE_NOTE_OVER_S:
                silent.append(f"{declaration.name} (up to {limit_s:g} s)")
        if silent:
            found.append(f"use case {use_case.name}: {', '.join(silent)}")
    if not found:
        return ()
    return ("no filler: a caller hears silence while these run, when the model calls them "
            "without a word first", *found,
            "give each a filler, said once it has run 1 s (`filler: \"One moment while I check "
            f"that.\"` in its declaration, {where}; docs/tools.md)",
            "a tool that plays audio itself needs none: declare it with "
            "@tool(..., plays_audio=True) and it is not listed")
