"""The words for a tool input schema that is not JSON Schema, for the mistakes people make.

jsonschema's own message is about its meta-schema, not the author's intent: ``type: str``
(Python's name) came out as "'str' is not valid under any of the given schemas", and
``required: true`` on a property (OpenAPI 2's and many form libraries' way) as "True is not of
type 'array'". Neither said what JSON Schema wants instead. The schema is the developer's own
file, never a caller's words, so its values may be quoted back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jsonschema.exceptions import SchemaError

from voiceagent.look_alike import look_alike

JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
# the names other languages and schema dialects give JSON's types
TYPE_ALIASES = {
    "str": "string", "text": "string", "int": "integer", "long": "integer",
    "float": "number", "double": "number", "decimal": "number", "bool": "boolean",
    "dict": "object", "map": "object", "list": "array", "tuple": "array", "none": "null"}
# keywords whose values are subschemas by name: a key under them is a property's name
NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                              "dependentSchemas"})


def schema_problem(err: SchemaError) -> str:
    """What is wrong with the schema and what to write instead, else jsonschema's words."""
    path = list(err.path)
    keyword = path[-1] if path else None
    if not isinstance(keyword, str) or (len(path) > 1 and path[-2] in NAMED_SUBSCHEMAS):
        return _plain(err)
    if keyword == "type" and (unknown := _unknown_types(err.instance)):
        return _type_problem(unknown)
    if keyword == "required" and isinstance(err.instance, bool):
        return _required_flag(path, err.instance)
    if (err.validator == "type" and err.validator_value == "array"
            and isinstance(err.instance, str | int | float)):
        return (f"{keyword} takes a list, not a single value: write {keyword}: "
                f"[{err.instance}]")
    return _plain(err)


def _plain(err: SchemaError) -> str:
    return f"not a valid JSON schema: {err.message}"


def _unknown_types(value: Any) -> list[str]:
    names = value if isinstance(value, list) else [value]
    return [n for n in names if isinstance(n, str) and n not in JSON_TYPES]


def _type_problem(unknown: Sequence[str]) -> str:
    name = unknown[0]
    guess = TYPE_ALIASES.get(name.lower()) or look_alike(name, JSON_TYPES, cutoff=0.6)
    hint = f" (did you mean {guess}?)" if guess else ""
    return (f"{name!r} is not a JSON Schema type{hint}; the types are "
            f"{', '.join(JSON_TYPES)}")


def _required_flag(path: Sequence[Any], flag: bool) -> str:
    """``required: true`` inside a property: in JSON Schema the object lists its required
    properties by name."""
    if not flag:
        return ("required is not a flag on a property in JSON Schema: remove it (a property "
                "is optional unless its object lists it in required)")
    prop = path[-2] if len(path) > 2 and path[-3] == "properties" else "name"
    return ("required is not a flag on a property in JSON Schema: remove it here and list "
            f"the property by name in its object, beside properties: required: [{prop}]")


def required_off_object(schema: Any, path: Sequence[Any]) -> str | None:
    """``required: [x]`` in a schema whose ``type`` cannot be an object (a string property):
    valid JSON Schema, so nothing refused it, but ``required`` only constrains objects and
    is ignored here; it was meant one level up, beside the object's ``properties``."""
    if not isinstance(schema, dict) or not isinstance(names := schema.get("required"), list):
        return None
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if kind is None or "object" in kinds:
        return None
    what = " or ".join(str(k) for k in kinds)
    what = f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"
    where = f"{path[-1]} is" if len(path) > 1 and path[-2] == "properties" else "this is"
    listed = ", ".join(str(n) for n in names)
    return (f"required only applies to an object, and {where} {what}, so it would be "
            "ignored here: remove it here and list the property by name in its object, "
            f"beside properties: required: [{listed}]")
