"""Tool code by name, and the checks that tie it to the use cases that declare tools.

The registry is built once at start-up (``plugins.build_registry(settings)``: the built-ins,
entry points and TOOLS modules) and shared read-only by every call, with the thread limiter
its blocking tools share. A use case declares each tool's schema; the registry holds the
code. ``check_use_case`` runs at load time, so a use case naming a tool nobody wrote, or
carrying a schema that is not valid JSON Schema, fails before a caller hears anything.

Input problems are reported by field path and rule only: tool arguments may hold what the
caller said (an address, a name), so no argument value is echoed into problems or logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import trio
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

import voiceagent.tools.call_control
import voiceagent.tools.messaging
import voiceagent.tools.restaurant
from voiceagent import jsonlimits
from voiceagent.errors import ConfigError
from voiceagent.look_alike import look_alike
from voiceagent.tools.base import ToolDefinition, tools_defined_in
from voiceagent.tools.schema_mistakes import required_off_object, schema_problem
from voiceagent.usecases import ToolDeclaration, UseCase

BUILTIN_MODULES = (voiceagent.tools.restaurant.__name__, voiceagent.tools.messaging.__name__,
                   voiceagent.tools.call_control.__name__)
DEFAULT_TOOL_THREADS = 16           # TOOL_THREADS' default
# a built-in tool's own check of the declaration that names it, for files being loaded: by
# the function, so a plugin's tool of the same name is not held to the built-in's rules
DECLARATION_CHECKS: dict[object, Callable[[UseCase, ToolDeclaration],
                                          tuple[str, str] | None]] = {
    voiceagent.tools.messaging.switch_language:
        voiceagent.tools.messaging.switch_language_problem}


class ToolRegistry:
    """Definitions by name, and ``threads``: the limiter every blocking tool of the process
    takes its worker thread from (never trio's default one, shared with everything else)."""

    def __init__(self, definitions: Iterable[ToolDefinition] = (), *,
                 threads: trio.CapacityLimiter | None = None) -> None:
        self._definitions: dict[str, ToolDefinition] = {}
        self._validators: dict[str, Draft202012Validator] = {}   # by canonical schema JSON
        self.threads = threads or trio.CapacityLimiter(DEFAULT_TOOL_THREADS)
        self.origins: dict[str, str] = {}        # tool name -> where it came from, for people
        # for a tool nobody registered: what TOOLS is, and the module it leaves out, if any
        # (" (TOOLS is a.tools; ...)"); plugins.build_registry sets it
        self.tools_hint: Callable[[str], str] = lambda name: ""
        for definition in definitions:
            self.register(definition)

    def register(self, definition: ToolDefinition, *, origin: str = "") -> None:
        """Add a tool. Registering a name twice is a programming error (``ValueError``)."""
        if definition.name in self._definitions:
            raise ValueError(f"tool {definition.name!r} is already registered")
        self._definitions[definition.name] = definition
        self.origins[definition.name] = origin or definition.function.__module__

    def get(self, name: str) -> ToolDefinition | None:
        return self._definitions.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._definitions))

    # ------------------------------------------------------------------ load-time checks

    def check_use_case(self, uc: UseCase, *, keywords: bool = True) -> None:
        """Every tool the use case names has code here and a valid schema; raises
        ``ConfigError`` at the first problem, with the key path inside the use case.
        ``keywords``: the checks added since use cases were first stored, too (schema
        keywords JSON Schema does not define, ``$ref`` that points at nothing, fixed inputs
        against the schema, formats included); on for files being loaded, off for use cases
        already in the table, whose calls must not stop being served when an upgrade
        tightens a check: at call time such a tool input is an error result, not a refusal."""
        source = f"use case {uc.name}"
        for i, declaration in enumerate(uc.tools):
            self._require(declaration.name, source, f"tools[{i}].name")
            validator = self._compile(declaration.input_schema, source,
                                      f"tools[{i}].input_schema")
            if not keywords:
                continue
            if declaration.filler is not None and self._definitions[declaration.name].ends_turn:
                raise ConfigError(source, f"tools[{i}].filler", (
                    f"{declaration.name} ends the call (ends_turn), so no filler is said "
                    "while it runs: the model says goodbye or why it transfers; remove filler"))
            if (typo := _unknown_keyword(declaration.input_schema)) is not None:
                where = _suffix(typo[0])
                raise ConfigError(source, f"tools[{i}].input_schema{where}",
                                  _keyword_problem(typo[1]))
            for path, subschema in _subschemas(declaration.input_schema):
                if (slip := required_off_object(subschema, path)) is not None:
                    raise ConfigError(source, f"tools[{i}].input_schema{_suffix(path)}"
                                              ".required", slip)
            _check_refs(validator, declaration.input_schema, source,
                        f"tools[{i}].input_schema")
            check = DECLARATION_CHECKS.get(self._definitions[declaration.name].function)
            if check is not None and (problem := check(uc, declaration)) is not None:
                raise ConfigError(source, f"tools[{i}].input_schema.{problem[0]}", problem[1])
        for i, entry in enumerate(uc.languages if keywords else ()):
            for name in entry.fillers or {}:
                definition = self._definitions.get(name)
                if definition is not None and definition.ends_turn:
                    raise ConfigError(source, f"languages[{i}].fillers.{name}", (
                        f"{name} ends the call (ends_turn), so no filler is said while it "
                        "runs: the model says goodbye or why it transfers; remove it"))
        declared = {t.name for t in uc.tools}
        named: list[tuple[str, str]] = [
            (handler.tool, f"dtmf.handlers.{digit}.tool")
            for digit, handler in uc.dtmf.handlers.items() if handler.tool is not None]
        named += [(rule.tool.name, f"scripted.rules[{i}].tool.name")
                  for i, rule in enumerate(uc.scripted.rules) if rule.tool is not None]
        for name, key_path in named:
            self._require(name, source, key_path)
            if name not in declared:
                raise ConfigError(source, key_path, f"tool {name!r} is not declared in this "
                                  f"use case's tools; declared: {sorted(declared)}")
        # the inputs fixed in the file: checked now, not when a caller presses the key
        fixed = [(handler.tool, handler.input, f"dtmf.handlers.{digit}.input")
                 for digit, handler in uc.dtmf.handlers.items() if handler.tool is not None]
        fixed += [(rule.tool.name, rule.tool.input, f"scripted.rules[{i}].tool.input")
                  for i, rule in enumerate(uc.scripted.rules) if rule.tool is not None]
        for name, args, key_path in fixed if keywords else []:
            target = uc.tool(name)
            if target is not None and (problems := self.validate_input(target, args)):
                raise ConfigError(source, key_path, f"does not fit tool {name}'s input_schema: "
                                  + "; ".join(problems))

    def _require(self, name: str, source: str, key_path: str) -> None:
        """A name nobody registered: the look-alike when there is one (a typo), else where
        the code of a tool comes from (a TOOLS module left out, or TOOLS itself unset)."""
        if name in self._definitions:
            return
        names = list(self.names())
        close = look_alike(name, names, cutoff=0.8)
        fix = (f"did you mean {close!r}?" if close else
               f"its code is a function decorated with @voiceagent.tools.tool({name!r}) in a "
               f"module named in TOOLS{self.tools_hint(name)}, or in a voiceagent.tools "
               "entry point (docs/tools.md)")
        raise ConfigError(source, key_path, f"no tool {name!r} is registered; "
                                            f"registered: {names}; {fix}")

    # ------------------------------------------------------------------ input validation

    def validator_for(self, decl: ToolDeclaration) -> Draft202012Validator:
        """The compiled validator for a declaration's schema, compiled once per schema."""
        return self._compile(decl.input_schema, f"tool {decl.name}", "input_schema")

    def validate_input(self, decl: ToolDeclaration, args: Mapping[str, Any]) -> list[str]:
        """Readable problems with ``args`` (empty = valid), each ``<field path>: <rule>``.
        Nesting is bounded first: the validator, the history's serializer and the store all
        recurse, and the input of a model that did not come through a JSON parse (a scripted
        or a test model) has had no bound yet."""
        if jsonlimits.depth(dict(args)) > jsonlimits.MAX_DEPTH:
            return [f"input: nested deeper than {jsonlimits.MAX_DEPTH} levels"]
        validator = self.validator_for(decl)
        try:
            errors = sorted(validator.iter_errors(dict(args)),
                            key=lambda e: (_field_path(e), str(e.validator)))
        except Exception as err:    # a $ref that points at nothing (a use case stored before
            # load refused it): the tool cannot be given its input, but the call goes on
            return [f"input_schema: cannot be checked ({type(err).__name__}); fix the "
                    "use case's schema"]
        problems: list[str] = []
        for error in errors:
            problem = f"{_field_path(error)}: {_describe(error)}"
            if problem not in problems:
                problems.append(problem)
        return problems

    def _compile(self, schema: dict[str, Any], source: str,
                 key_path: str) -> Draft202012Validator:
        key = json.dumps(schema, sort_keys=True, default=str)
        if (validator := self._validators.get(key)) is not None:
            return validator
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as err:
            where = _suffix(err.path)
            raise ConfigError(source, key_path + where, schema_problem(err)) from None
        if schema.get("type") != "object":
            raise ConfigError(source, key_path + ".type",
                              'a tool input schema must be {"type": "object", ...} (Bedrock)')
        # ``format`` is only an annotation in 2020-12 unless checked: a schema saying "email"
        # or "date" means the tool may rely on it
        validator = Draft202012Validator(schema,
                                         format_checker=Draft202012Validator.FORMAT_CHECKER)
        self._validators[key] = validator
        return validator


def _suffix(path: Iterable[str | int]) -> str:
    """A schema path as a key path's continuation: ``.properties.day``, ``[0]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _check_refs(validator: Draft202012Validator, schema: dict[str, Any], source: str,
                key_path: str) -> None:
    for path, ref in _refs(schema):
        try:                    # resolved as the validator would, from the schema's root
            list(validator.evolve(schema={"$ref": ref}).iter_errors(None))
        except Exception:       # jsonschema's reference errors are private classes
            where = _suffix(path)
            raise ConfigError(source, key_path + where, (
                f"$ref {ref!r} points at nothing in this schema (nothing is fetched): "
                "point into its own $defs, e.g. '#/$defs/name'")) from None


# Keywords of JSON Schema 2020-12 that do not validate (annotations, identifiers), and
# "definitions", the older $defs ($ref still reaches it); the validating ones are the
# validator's own
ANNOTATIONS = frozenset({
    "$schema", "$id", "$anchor", "$dynamicAnchor", "$vocabulary", "$comment", "$defs",
    "definitions", "title", "description", "default", "examples", "deprecated", "readOnly",
    "writeOnly", "contentMediaType", "contentEncoding", "contentSchema", "then", "else"})
# minContains/maxContains validate, but inside the validator's ``contains``, not as its keys
KEYWORDS = (frozenset(Draft202012Validator.VALIDATORS) | ANNOTATIONS
            | {"minContains", "maxContains"})
_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains",
        "propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema")
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_BY_NAME = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


# OpenAPI's own keywords, common in schemas written for other model APIs: JSON Schema ignores
# them, so what they seem to say is not enforced
OPENAPI_HINTS = {
    "nullable": 'to allow null, list it in the type: "type": ["string", "null"]',
    "example": 'JSON Schema spells it "examples", a list',
    "discriminator": "choose between schemas with oneOf",
    "externalDocs": 'put the link in "description"',
    "xml": "a tool's input is JSON; remove it"}
# older drafts' keywords that 2020-12, which tool inputs are validated with, ignores
OLDER_DRAFT_HINTS = {
    "dependencies": "use dependentRequired (a list of field names) or dependentSchemas (a "
                    "schema)",
    "additionalItems": 'with prefixItems, "items" is the schema of the items after them'}


def _keyword_problem(keyword: str) -> str:
    if keyword in OPENAPI_HINTS:
        return (f"{keyword!r} is OpenAPI's, not JSON Schema's, and would be ignored: "
                f"{OPENAPI_HINTS[keyword]}")
    if keyword in OLDER_DRAFT_HINTS:
        return (f"{keyword!r} is an older draft's, and would be ignored under JSON Schema "
                f"2020-12: {OLDER_DRAFT_HINTS[keyword]}")
    return (f"unknown JSON Schema keyword {keyword!r} (a typo would be ignored, not "
            "enforced); keywords: see json-schema.org")


SchemaPath = tuple[str | int, ...]


def _children(path: SchemaPath, key: str, value: Any) -> list[tuple[SchemaPath, Any]]:
    """The subschemas under ``key``, with their paths."""
    if key in _ONE:
        return [((*path, key), value)]
    if key in _MANY and isinstance(value, list):
        return [((*path, key, i), v) for i, v in enumerate(value)]
    if key in _BY_NAME and isinstance(value, dict):
        return [((*path, key, name), v) for name, v in value.items()]
    return []


def _unknown_keyword(schema: Any, path: SchemaPath = ()) -> tuple[SchemaPath, str] | None:
    """The path and name of the first keyword JSON Schema does not define, or None: an
    unknown keyword is valid JSON Schema but ignored, so a misspelt ``required`` or
    ``minimum`` would never be enforced."""
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key not in KEYWORDS and not key.startswith("x-"):     # x-: vendor extensions
            return (*path, key), key
        for child_path, child in _children(path, key, value):
            if (found := _unknown_keyword(child, child_path)) is not None:
                return found
    return None


def _subschemas(schema: Any, path: SchemaPath = ()) -> Iterator[tuple[SchemaPath, Any]]:
    """``schema`` and every schema in it, each with its path."""
    yield path, schema
    if isinstance(schema, dict):
        for key, value in schema.items():
            for child_path, child in _children(path, key, value):
                yield from _subschemas(child, child_path)


def _refs(schema: Any, path: SchemaPath = ()) -> Iterator[tuple[SchemaPath, str]]:
    """Every ``$ref`` and its path, but none under a nested ``$id`` (resolved from there)."""
    if not isinstance(schema, dict) or (path and "$id" in schema):
        return
    if isinstance(ref := schema.get("$ref"), str):
        yield (*path, "$ref"), ref
    for key, value in schema.items():
        for child_path, child in _children(path, key, value):
            yield from _refs(child, child_path)


def _field_path(error: ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "input"


def _describe(error: ValidationError) -> str:
    """What the rule wants, in words, from the schema side only (never the caller's value)."""
    rule, instance = error.validator, error.instance
    wanted: Any = error.validator_value
    if rule == "required" and isinstance(instance, dict):
        missing = [name for name in wanted if name not in instance]
        return f"missing required field(s) {missing}"
    if rule == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        known = set(schema.get("properties", {}))
        return f"unexpected field(s) {sorted(set(instance) - known)}"
    if rule == "type":
        return f"must be of type {wanted}" if isinstance(wanted, str) else \
            f"must be one of the types {list(wanted)}"
    words = {
        "enum": "must be one of {}", "const": "must be {}",
        "minimum": "must be at least {}", "maximum": "must be at most {}",
        "exclusiveMinimum": "must be more than {}", "exclusiveMaximum": "must be less than {}",
        "minLength": "must have at least {} characters",
        "maxLength": "must have at most {} characters",
        "minItems": "must have at least {} items", "maxItems": "must have at most {} items",
        "pattern": "must match the pattern {}", "format": "must be a valid {}",
    }
    if isinstance(rule, str) and rule in words:
        return words[rule].format(list(wanted) if isinstance(wanted, list | tuple) else wanted)
    return f"does not satisfy the schema rule {rule!r}"


def builtin_tools() -> tuple[ToolDefinition, ...]:
    """Every tool voiceagent itself registers (``@tool`` in ``BUILTIN_MODULES``)."""
    return tuple(d for module in BUILTIN_MODULES for d in tools_defined_in(module))


def default_registry() -> ToolRegistry:
    """The built-in tools alone: for tests and tools of our own. The service builds its
    registry with ``plugins.build_registry(settings)``."""
    return ToolRegistry(builtin_tools())
