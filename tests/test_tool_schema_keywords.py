"""Schema keywords: what JSON Schema defines loads; OpenAPI's is refused at load with a hint,
but a use case already in the table is still served."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize("keyword", ["minContains", "maxContains"])
def test_schema_keywords_the_validator_enforces_still_load(keyword: str) -> None:
    """minContains/maxContains are 2020-12 validation keywords (jsonschema enforces them
    inside its ``contains`` validator, so they are not keys of VALIDATORS): a schema that
    loaded yesterday is now refused as 'unknown JSON Schema keyword ... a typo'."""
    from voiceagent.tools.registry import default_registry
    from voiceagent.usecases import UseCase

    schema: dict[str, Any] = {"type": "object", "properties": {"toppings": {
        "type": "array", "items": {"type": "string"},
        "contains": {"const": "cheese"}, keyword: 1}}}
    uc = UseCase.model_validate({"name": "demo", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": schema}]})
    default_registry().check_use_case(uc)
    validator = default_registry().validator_for(uc.tools[0])
    assert validator.is_valid({"toppings": ["cheese"]})


async def test_a_use_case_stored_yesterday_with_an_openapi_keyword_is_still_served() -> None:
    """`nullable` and `example` are OpenAPI's, common in tool schemas written for other
    model APIs; JSON Schema ignores them, so refusing them enforces nothing. A use case that
    `config load` wrote to the table before this change has its calls apologised to after
    the image is upgraded: Catalog.use_case raises UnusableUseCase ('a typo')."""
    from tests.fakes import MemoryStore
    from voiceagent.catalog import Catalog
    from voiceagent.store import config_records
    from voiceagent.tools.registry import default_registry
    from voiceagent.usecases import UseCase

    uc = UseCase.model_validate({"name": "orders", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": {
            "type": "object", "properties": {"reason": {
                "type": "string", "nullable": True, "example": "done"}}}}]})
    store = MemoryStore()
    await store.put(config_records.use_case_item(uc))         # what yesterday's `config load` wrote
    served = await Catalog(store, default_registry()).use_case("orders")  # type: ignore[arg-type]
    assert served.name == "orders"


def test_an_openapi_keyword_in_a_file_being_loaded_says_what_json_schema_wants() -> None:
    import pytest

    from voiceagent.errors import ConfigError
    from voiceagent.tools.registry import default_registry
    from voiceagent.usecases import UseCase

    uc = UseCase.model_validate({"name": "orders", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": {
            "type": "object", "properties": {"reason": {"type": "string", "nullable": True}}}}]})
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(uc)
    assert caught.value.key_path == "tools[0].input_schema.properties.reason.nullable"
    assert caught.value.problem == (
        "'nullable' is OpenAPI's, not JSON Schema's, and would be ignored: to allow null, "
        'list it in the type: "type": ["string", "null"]')
