"""Which of a use case's validation errors to report, and in what words.

A file is reported by one problem, named by its key path. Pydantic lists them in field order,
so a misspelt required key (``promt:``) came out as ``prompt: Field required`` while the key
actually written, the cause, went unsaid; a missing key is now reported as the unknown key
beside it that looks like it, with the name it should have; any other unknown key is told
the key it looks like at that place in the file (``them:`` in a scripted rule: ``then``), from
the file's model, rather than only to check the spelling. Text that YAML read as a
boolean (``code: no``, Norwegian) says to quote it: "a valid string" did not say why.
"""

from __future__ import annotations

from collections import abc
from collections.abc import Sequence
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from voiceagent.look_alike import look_alike
from voiceagent.usecase_relay import KEY_PROBLEM, quote_it

UNKNOWN_KEY = "unknown key (check the spelling; see config/README.md for the keys)"


def first_problem(errors: Sequence[ErrorDetails],
                  model: type[BaseModel] | None = None) -> tuple[tuple[int | str, ...], str]:
    """The key path and the words of the problem to report; ``model``, the file's, lets an
    unknown key be told the key it looks like (``handler`` of ``dtmf``: ``handlers``)."""
    for missing in (e for e in errors if e["type"] == "missing" and e["loc"]):
        parent, wanted = tuple(missing["loc"][:-1]), missing["loc"][-1]
        unknown = {str(e["loc"][-1]): tuple(e["loc"]) for e in errors
                   if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parent}
        if (written := look_alike(str(wanted), sorted(unknown))) is not None:
            return unknown[written], (f"unknown key (did you mean {wanted}? it is required; "
                                      "see config/README.md for the keys)")
    first = errors[0]
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        known = keys_at(model, loc[:-1]) if model is not None else []
        close = look_alike(str(loc[-1]), known) if loc else None
        return loc, (f"unknown key (did you mean {close}? see config/README.md for the "
                     "keys)" if close else UNKNOWN_KEY)
    if first["type"] == KEY_PROBLEM:
        return loc + tuple(first.get("ctx", {}).get("at", ())), first["msg"]
    if first["type"] == "string_type" and isinstance(first["input"], bool):
        key = loc[-1] if loc and isinstance(loc[-1], str) else None
        return loc, f"must be text, not true/false; {quote_it(first['input'], key)}"
    return loc, first["msg"]


def keys_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys a file may have at ``loc`` (a mapping's key path), as written in it: the
    fields of the model found there by following fields, list items and mapping values;
    none when the path leads elsewhere (a key of free-form data, such as a tool's input)."""
    node: Any = model
    for part in loc:
        node = _inside(_unwrap(node), part)
        if node is None:
            return []
    found = _unwrap(node)
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        return []
    return [field.alias or name for name, field in found.model_fields.items()]


def _unwrap(node: Any) -> Any:
    """``X | None`` as ``X``: an optional section's keys are its type's."""
    if get_origin(node) in (Union, UnionType):
        kinds = [arg for arg in get_args(node) if arg is not type(None)]
        return kinds[0] if len(kinds) == 1 else None
    return node


def _inside(node: Any, part: int | str) -> Any:
    """What is found one step down from ``node``: a model's field, an item, a value."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        fields = {field.alias or name: field for name, field in node.model_fields.items()}
        field = fields.get(str(part))
        return field.annotation if field is not None else None
    origin, args = get_origin(node), get_args(node)
    if origin in (list, tuple, abc.Sequence) and isinstance(part, int) and args:
        return args[0]
    if origin in (dict, abc.Mapping) and len(args) == 2:
        return args[1]
    return None
