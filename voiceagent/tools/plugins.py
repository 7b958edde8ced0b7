"""The process's tools: the built-ins, then installed packages' entry points, then the modules
TOOLS names, registered once at start-up.

``build_registry(settings)`` is what ``serve`` (through ``open_runtime``), ``config load`` and
``check`` use. A tool module is an ordinary Python module whose tool functions carry
``@voiceagent.tools.tool``: importing it registers them. Installed packages offer such
modules through the ``voiceagent.tools`` entry-point group, one module per entry point::

    [project.entry-points."voiceagent.tools"]
    my_agent = "my_agent.tools"

An entry point names a module, never an attribute (``my_agent.tools:something``), so the
same module works in TOOLS and as an entry point. Every problem stops start-up with one
``ConfigError`` line: where the module was named (TOOLS, or the entry point and its
package), the module, and what is wrong: it could not be imported (the exception's type and
message, no traceback), it registers no tool, or one of its names is already taken.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
from dataclasses import dataclass
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import trio

import voiceagent
from voiceagent.errors import ConfigError
from voiceagent.look_alike import look_alike
from voiceagent.settings import Settings
from voiceagent.tools.base import ToolDefinition, modules_defining, tools_defined_in
from voiceagent.tools.registry import BUILTIN_MODULES, ToolRegistry

ENTRY_POINT_GROUP = "voiceagent.tools"
MAX_PROBLEM_CHARS = 300             # an import error's message, on one line
MAX_SOURCE_BYTES = 1 << 20          # of a module TOOLS leaves out, searched for a tool's name
_PACKAGE = str(Path(voiceagent.__file__).parent) + os.sep


@dataclass(frozen=True, slots=True)
class ToolSource:
    """Where a tool module was named: ``where`` is "TOOLS" or the entry point."""

    where: str
    module: str

    def __str__(self) -> str:
        return f"{self.where} module {self.module}"

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.where, self.module, problem)


def build_registry(settings: Settings) -> ToolRegistry:
    """Built-ins, then entry points (by name), then TOOLS modules (in order), with a thread
    limiter of TOOL_THREADS for blocking tools. Raises ``ConfigError`` at the first problem;
    imports modules, so call it once, at start-up."""
    registry = ToolRegistry(threads=trio.CapacityLimiter(settings.tool_threads))
    for module in BUILTIN_MODULES:
        _add(registry, tools_defined_in(module), f"voiceagent's built-in {module}", None)
    sources = [*entry_point_sources(), *(ToolSource("TOOLS", m) for m in settings.tools_modules)]
    for source in sources:
        _add(registry, load_module(source), str(source), source)
    modules = tuple(settings.tools_modules)
    registry.tools_hint = partial(tools_hint, modules)     # asked only for a missing tool
    return registry


def tools_hint(modules: tuple[str, ...], name: str) -> str:
    """TOOLS, said to a use case naming tool ``name`` that nothing registered, with the
    module that defines it (imported, by a TOOLS module, but not itself in TOOLS: a module's
    tools are its own and its submodules') or, beside TOOLS's, mentions it if there is one:
    a tool written in a new file of the project, the file never added to TOOLS (or added to
    .env, not to the project's tests)."""
    if not modules:
        return " (TOOLS is not set)"
    defined = [f"{module} defines" for module in modules_defining(name)]
    found = defined or [f"{module} mentions" for module, file in
                        _unlisted_modules(modules).items() if _mentions(file, name)]
    left_out = f"; {found[0]} {name!r} but is not in it: add it to TOOLS" if found else ""
    return f" (TOOLS is {','.join(modules)}{left_out})"


def _unlisted_modules(modules: tuple[str, ...]) -> dict[str, Path]:
    """The source files of the modules in the packages of TOOLS's modules that nothing
    imported, found without importing them; none beside a top-level module, whose folder
    may hold anything."""
    found: dict[str, Path] = {}
    for package in dict.fromkeys(m.rpartition(".")[0] for m in modules):
        path = getattr(sys.modules.get(package), "__path__", None) if package else None
        for info in pkgutil.iter_modules(path or []):
            name, folder = f"{package}.{info.name}", getattr(info.module_finder, "path", None)
            if name in sys.modules or name in modules or not isinstance(folder, str):
                continue
            file = Path(folder, info.name, "__init__.py") if info.ispkg else \
                Path(folder, f"{info.name}.py")
            found[name] = file
    return found


def _mentions(file: Path, name: str) -> bool:
    """Whether the source names the tool in quotes, as ``@tool("name")`` does."""
    try:
        with file.open("rb") as source:
            text = source.read(MAX_SOURCE_BYTES).decode("utf-8", "replace")
    except OSError:
        return False
    return f'"{name}"' in text or f"'{name}'" in text


def entry_point_sources() -> list[ToolSource]:
    """The installed ``voiceagent.tools`` entry points, sorted by name; an entry point naming
    an attribute rather than a module is an error."""
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))
    sources: list[ToolSource] = []
    for entry in found:
        source = ToolSource(_describe(entry), entry.value)
        if entry.attr is not None:
            raise source.error(f"names an attribute; a {ENTRY_POINT_GROUP} entry point names a "
                               f"module ({entry.module}) whose @tool functions register when "
                               "it is imported")
        sources.append(source)
    return sources


def load_module(source: ToolSource) -> tuple[ToolDefinition, ...]:
    """Import the module and return the tools it (or its submodules) registered."""
    try:
        importlib.import_module(source.module)
    except Exception as err:
        message = " ".join(str(err).split())[:MAX_PROBLEM_CHARS]
        raise source.error(f"cannot import it: {type(err).__name__}: {message}"
                           f"{_where(err)}{_misspelt(source.module, err)}") from err
    definitions = tools_defined_in(source.module)
    if not definitions:
        if submodules := _unimported_submodules(source.module):
            raise source.error(
                f"registers no tools: it is a package, and importing it does not import its "
                f"modules {submodules}; name the one with the tools "
                f"({submodules[0]}) instead, or import it in "
                f"{source.module}/__init__.py")
        raise source.error("registers no tools: decorate its tool functions with "
                           "@voiceagent.tools.tool(\"ToolName\")")
    return definitions


def _misspelt(module: str, err: Exception) -> str:
    """`` ; did you mean dentist.tools?`` when the name itself is what is not there (a typo in
    TOOLS), not something the module imports; or, for a first part found nowhere, where
    Python looks. Close names are the importable siblings of the part not found."""
    missing = err.name if isinstance(err, ModuleNotFoundError) else None
    if not missing or not (module == missing or module.startswith(missing + ".")):
        return ""
    parent, _, last = missing.rpartition(".")
    path = getattr(sys.modules.get(parent), "__path__", None) if parent else sys.path
    if path is None:                    # its parent is a module, not a package
        return ""
    names = [info.name for info in pkgutil.iter_modules(path)]
    if close := look_alike(last, names, cutoff=0.75):
        return f"; did you mean {missing[:-len(last)]}{close}{module[len(missing):]}?"
    if parent:
        return ""
    return (f"; no {missing} on the Python path: run from the folder holding {missing}/, or "
            "add that folder to PYTHONPATH")


def _where(err: Exception) -> str:
    """Where the import failed, as `` (at FILE:LINE)``: a KeyError from a missing environment
    variable names neither. A SyntaxError carries its own place in its message."""
    # the deepest frame of real code: not Python's frozen modules (os.environ's KeyError
    # is raised in <frozen os>), not this call of import_module
    frames = [frame for frame in traceback.extract_tb(err.__traceback__)
              if not frame.filename.startswith("<")
              and frame.filename not in (__file__, importlib.__file__)]
    # a mistake voiceagent refuses (``@tool``'s checks) is on the module's own line
    own = [frame for frame in frames if not frame.filename.startswith(_PACKAGE)] or frames
    if isinstance(err, SyntaxError) or not own:
        return ""
    return f" (at {own[-1].filename}:{own[-1].lineno})"


def _unimported_submodules(module: str) -> list[str]:
    """A package's submodules that were not imported (found without importing them)."""
    package = sys.modules.get(module)
    path = getattr(package, "__path__", None)
    if path is None:
        return []
    return [f"{module}.{info.name}" for info in pkgutil.iter_modules(path)
            if f"{module}.{info.name}" not in sys.modules]


def _add(registry: ToolRegistry, definitions: tuple[ToolDefinition, ...], origin: str,
         source: ToolSource | None) -> None:
    for definition in definitions:
        current = registry.get(definition.name)
        if current is definition:          # a package and its submodule both named: one tool
            continue
        if current is not None:
            problem = (f"tool {definition.name!r} is already registered by "
                       f"{registry.origins[definition.name]}; rename one of them (a tool name "
                       "is unique in the process)")
            raise source.error(problem) if source else ConfigError(origin, "", problem)
        registry.register(definition, origin=origin)


def _describe(entry: EntryPoint) -> str:
    package = f" of {entry.dist.name} {entry.dist.version}" if entry.dist is not None else ""
    return f"entry point {entry.name!r}{package} ({ENTRY_POINT_GROUP})"
