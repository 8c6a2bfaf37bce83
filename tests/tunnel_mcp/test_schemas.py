"""The output schemas we publish say what pydantic's say: the same results valid, the same words.

`schemas.compact` rewrites each result model's JSON schema into a form a client checks
cheaply (no `$ref`, nullable types instead of `anyOf [X, null]`). Here: for every tool, values
drawn from pydantic's own schema, some of them broken in one place, are judged alike by both
schemas (property-based), what the models emit is accepted, and every title and description
is still there for the agent to read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from referencing import Registry

import tunnel_mcp.tools as tool_table
from tunnel_mcp.schemas import compact
from tunnel_mcp.toolkit import Tool

TOOLS = {tool.name: tool for tool in tool_table.TOOLS}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    # As the SDK's client builds it (mcp.client.session): checked, then with an empty registry.
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=Registry())


def _walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# -- values drawn from pydantic's schema ----------------------------------------------------------

_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.floats(-10, 10),
    st.sampled_from(["", "bogus", "host", "chat", "running"]),
    st.just([]),
    st.just([None]),
    st.just({}),
    st.just({"id": 1}),
)


def _valid(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values `schema` (pydantic's form, with `$defs`) accepts."""
    if "$ref" in schema:
        return _valid(defs[schema["$ref"].removeprefix("#/$defs/")], defs)
    if "anyOf" in schema:
        return st.one_of([_valid(branch, defs) for branch in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        return st.text(max_size=4)
    if kind == "integer":
        return st.integers(-3, 3)
    if kind == "number":
        return st.one_of(st.integers(-3, 3), st.floats(-10, 10))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(_valid(schema.get("items", {}), defs), max_size=2)
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: _valid(v, defs) for k, v in properties.items() if k in required},
            optional={k: _valid(v, defs) for k, v in properties.items() if k not in required},
        )
    raise AssertionError(f"a schema form this test does not draw from: {schema}")


@st.composite
def _broken(draw: st.DrawFn, value: Any) -> Any:
    """`value` with one place changed: a value replaced, a key dropped, or an unknown key added."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        how = draw(st.sampled_from(["inside", "replace", "drop", "extra"]))
        changed = dict(value)
        if how == "inside":
            changed[key] = draw(_broken(value[key]))
        elif how == "replace":
            changed[key] = draw(_JUNK)
        elif how == "drop":
            del changed[key]
        else:
            changed["unknownKey"] = draw(_JUNK)
        return changed
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [draw(_broken(v)) if j == i else v for j, v in enumerate(value)]
    return draw(_JUNK)


@st.composite
def _values(draw: st.DrawFn, tool: Tool) -> Any:
    """A value pydantic's schema for `tool`'s result accepts, or that value broken in one place."""
    schema = tool.result.model_json_schema()
    value = draw(_valid(schema, schema.get("$defs", {})))
    return draw(_broken(value)) if draw(st.booleans()) else value


_VALIDATORS = {
    name: (_validator(t.result.model_json_schema()), _validator(t.output_schema)) for name, t in TOOLS.items()
}


@pytest.mark.parametrize("name", sorted(TOOLS))
@given(data=st.data())
def test_the_published_schema_judges_every_value_as_pydantics_does(name: str, data: st.DataObject) -> None:
    tool = TOOLS[name]
    value = data.draw(_values(tool))
    pydantic_form, published = _VALIDATORS[name]
    valid = pydantic_form.is_valid(value)
    assert published.is_valid(value) == valid, json.dumps(value)
    if valid:
        # What the model emits for it (the tool's structured content) is accepted too.
        try:
            model = tool.result.model_validate(value)
        except ValidationError:
            return  # stricter than JSON Schema (2.0 is an "integer" there, not to pydantic)
        emitted = model.model_dump(mode="json", by_alias=True)
        assert published.is_valid(emitted), json.dumps(emitted)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_the_drawn_values_are_both_valid_and_invalid(name: str) -> None:
    """The property above is not vacuous: it is shown values of both verdicts."""
    pydantic_form = _VALIDATORS[name][0]
    for verdict in (True, False):
        find(
            _values(TOOLS[name]),
            lambda value, verdict=verdict: pydantic_form.is_valid(value) == verdict,
            settings=settings(phases=[Phase.generate], database=None),  # any will do: no shrinking
        )


# -- what the schemas say -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_published_schemas_have_no_references_and_no_null_branches(name: str) -> None:
    schema = TOOLS[name].output_schema
    for node in _walk(schema):
        if isinstance(node, dict):
            assert "$ref" not in node and "$defs" not in node, name
            assert {"type": "null"} not in node.get("anyOf", []), (name, node)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_title_and_description_is_still_published(name: str) -> None:
    def said(schema: dict[str, Any], key: str) -> list[str]:
        return [n[key] for n in _walk(schema) if isinstance(n, dict) and isinstance(n.get(key), str)]

    original = TOOLS[name].result.model_json_schema()
    published = TOOLS[name].output_schema
    # A model's own title ("Member") gives way to its field's ("Sender"); every field title stays.
    model_titles = {d.get("title") for d in original.get("$defs", {}).values()}
    for title in set(said(original, "title")) - model_titles:
        assert title in said(published, "title"), (name, title)
    for description in said(original, "description"):
        assert any(description in text for text in said(published, "description")), (name, description)


# -- the rewrite itself ---------------------------------------------------------------------------


def test_nullable_forms() -> None:
    schema = {
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "A", "default": None},
            "b": {"anyOf": [{"type": "null"}, {"enum": ["x", "y"], "type": "string"}]},
            "c": {"anyOf": [{"const": 3, "type": "integer"}, {"type": "null"}]},
            # A keyword that judges every value: merging would let null through it, so it stays.
            "d": {"anyOf": [{"type": "string", "not": {"const": "z"}}, {"type": "null"}]},
            # A literal, any string, or null: the null folds into the plain type, which goes first.
            "e": {"anyOf": [{"enum": ["k"], "type": "string"}, {"type": "string"}, {"type": "null"}]},
        },
        "type": "object",
    }
    assert compact(schema)["properties"] == {
        "a": {"type": ["string", "null"], "title": "A", "default": None},
        "b": {"enum": ["x", "y", None], "type": ["string", "null"]},
        "c": {"enum": [3, None], "type": ["integer", "null"]},
        "d": {"anyOf": [{"type": "null"}, {"type": "string", "not": {"const": "z"}}]},
        "e": {"anyOf": [{"type": ["string", "null"]}, {"enum": ["k"], "type": "string"}]},
    }


def test_references_are_inlined_with_both_descriptions() -> None:
    schema = {
        "$defs": {
            "Item": {
                "description": "What an item is.",
                "properties": {"n": {"type": "integer"}},
                "required": ["n"],
                "title": "Item",
                "type": "object",
            }
        },
        "properties": {
            "one": {"$ref": "#/$defs/Item", "title": "One", "description": "This one."},
            "maybe": {"anyOf": [{"$ref": "#/$defs/Item"}, {"type": "null"}], "title": "Maybe"},
        },
        "type": "object",
    }
    item = {"properties": {"n": {"type": "integer"}}, "required": ["n"], "type": "object"}
    assert compact(schema) == {
        "properties": {
            "one": {**item, "title": "One", "description": "This one. What an item is."},
            "maybe": {**item, "type": ["object", "null"], "title": "Maybe", "description": "What an item is."},
        },
        "type": "object",
    }


@pytest.mark.parametrize(
    "schema",
    [
        {"$defs": {"Node": {"properties": {"next": {"$ref": "#/$defs/Node"}}}}, "$ref": "#/$defs/Node"},
        {"properties": {"x": {"$ref": "https://example.com/schema"}}},
        {"properties": {"x": {"$ref": "#/$defs/Missing"}}},
    ],
)
def test_references_it_cannot_inline_are_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cannot inline"):
        compact(schema)
