"""The table: what ``voiceagent store init`` creates (the original sample's layout, billed on
demand) and how an existing table is checked against it, one problem per difference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from voiceagent.store.base import INDEX_NAME


def table_definition(table_name: str) -> dict[str, Any]:
    """CreateTable's arguments: the original sample's table, billed on demand."""
    strings = [{"AttributeName": name, "AttributeType": "S"}
               for name in ("pk", "sk", "pk1", "sk1")]
    return {
        "TableName": table_name, "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": strings,
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                      {"AttributeName": "sk", "KeyType": "RANGE"}],
        "GlobalSecondaryIndexes": [{
            "IndexName": INDEX_NAME,
            "KeySchema": [{"AttributeName": "pk1", "KeyType": "HASH"},
                          {"AttributeName": "sk1", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"}}],
    }


def table_problems(table: Mapping[str, Any]) -> list[str]:
    """How a DescribeTable ``Table`` differs from ``table_definition``: one entry each."""
    problems: list[str] = []
    types = {d["AttributeName"]: d["AttributeType"]
             for d in table.get("AttributeDefinitions", [])}
    expected = table_definition(str(table.get("TableName", "")))
    want_keys = _key_schema(expected["KeySchema"])
    have_keys = _key_schema(table.get("KeySchema", []))
    if have_keys != want_keys:
        problems.append(f"key schema is {have_keys}, expected {want_keys}")
    indexes = {i["IndexName"]: i for i in table.get("GlobalSecondaryIndexes", [])}
    index = indexes.get(INDEX_NAME)
    want_index = _key_schema(expected["GlobalSecondaryIndexes"][0]["KeySchema"])
    if index is None:
        problems.append(f"no global secondary index {INDEX_NAME!r} "
                        f"(expected {want_index}, projection ALL)")
    else:
        have_index = _key_schema(index.get("KeySchema", []))
        if have_index != want_index:
            problems.append(f"index {INDEX_NAME} key schema is {have_index}, "
                            f"expected {want_index}")
        projection = index.get("Projection", {}).get("ProjectionType")
        if projection != "ALL":
            problems.append(f"index {INDEX_NAME} projects {projection}, expected ALL")
    for name in ("pk", "sk", "pk1", "sk1"):
        if name in types and types[name] != "S":
            problems.append(f"attribute {name} has type {types[name]}, expected S (string)")
    return problems


def _key_schema(schema: Sequence[Mapping[str, str]]) -> str:
    roles = {e["KeyType"]: e["AttributeName"] for e in schema}
    return f"{roles.get('HASH')}/{roles.get('RANGE')}"


def is_active(table: Mapping[str, Any]) -> bool:
    indexes = table.get("GlobalSecondaryIndexes", [])
    return table.get("TableStatus") == "ACTIVE" and all(
        i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in indexes)
