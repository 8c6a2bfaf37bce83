"""Output schemas in the form a client checks cheaply, saying the same as pydantic's.

Every MCP client built on the SDK checks each structured tool result against the tool's
output schema (`jsonschema`, one compiled validator per tool). What that costs follows the
shape of the schema, not the size of the result: each subschema the validator enters is a new
validator object, a `$ref` is a lookup through `referencing` and one more subschema, and an
`anyOf` tries its branches in order, building a full error object for every branch that fails.
pydantic publishes optional fields as `anyOf: [X, {"type": "null"}]` (a null fails X first),
and nested models as `$ref`s into `$defs`: a tunnel_status result cost the SDK's client ~290 us
to check, about as much as a whole MCP round trip.

`compact` rewrites a schema into an equivalent one (the same instances valid, the same words
for an agent to read) that avoids those costs:

* `$ref`s into `$defs` are replaced by the definition (the reference's own keywords, such as
  its title, win), and `$defs` goes; a model that contains itself would have no finite
  inline form and is refused;
* `anyOf: [X, {"type": "null"}]`, where X applies only to values of its own type, becomes X
  with `"null"` added to its `type` (and to its `enum`): no keyword of X can then reject null;
* in an `anyOf` that stays, branches that check a type and nothing else go first (`anyOf`
  does not depend on order; the first branch that holds ends the check).

Only output schemas are rewritten: input schemas are what agents' clients translate for their
models (some of those translations know `anyOf` but not a list of types), and nobody checks
arguments with `jsonschema` per call (the server validates them with pydantic). Nothing here
runs per call: the tools listing is built once.
"""

from __future__ import annotations

from typing import Any

#: Keywords that check only values of one JSON type (JSON Schema 2020-12, validation and
#: applicator vocabularies): a value of another type, null included, passes them.
_TYPE_BOUND = frozenset(
    {
        # strings
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        # numbers
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        # arrays
        "items",
        "prefixItems",
        "contains",
        "minContains",
        "maxContains",
        "minItems",
        "maxItems",
        "uniqueItems",
        "unevaluatedItems",
        # objects
        "properties",
        "patternProperties",
        "additionalProperties",
        "propertyNames",
        "required",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedProperties",
    }
)

#: Keywords that annotate and never make a value invalid.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$comment"}
)

_NULL = {"type": "null"}


def compact(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (a pydantic model's JSON schema) in its cheap-to-check form (module docstring).

    Raises ValueError for a `$ref` that does not point into the schema's own `$defs`, or a
    definition that contains itself."""
    definitions: dict[str, Any] = schema.get("$defs", {})
    inlined = _inline({k: v for k, v in schema.items() if k != "$defs"}, definitions, ())
    result = _simplify(inlined)
    assert isinstance(result, dict)
    return result


def _inline(node: Any, definitions: dict[str, Any], inside: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, definitions, inside) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if ref is None:
        return {key: _inline(value, definitions, inside) for key, value in node.items()}
    name = ref.removeprefix("#/$defs/") if isinstance(ref, str) else ""
    if name == ref or name not in definitions:
        raise ValueError(f"cannot inline {ref!r}: only references into the schema's own $defs")
    if name in inside:
        raise ValueError(f"cannot inline {ref!r}: the definition contains itself")
    body = _inline(definitions[name], definitions, (*inside, name))
    own = {key: _inline(value, definitions, inside) for key, value in node.items() if key != "$ref"}
    return _over(body, own)


def _over(inner: dict[str, Any], outer: dict[str, Any]) -> dict[str, Any]:
    """`inner` with `outer`'s keywords on top. Both descriptions apply to the value (a field's
    own, then its model's: "the offer (untrusted names)", then what an offer is), so both stay."""
    merged = {**inner, **outer}
    said, also = outer.get("description"), inner.get("description")
    if isinstance(said, str) and isinstance(also, str) and also not in said:
        merged["description"] = f"{said} {also}"
    return merged


def _simplify(node: Any) -> Any:
    if isinstance(node, list):
        return [_simplify(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _simplify(value) for key, value in node.items()}
    branches = out.get("anyOf")
    if isinstance(branches, list):
        merged = _nullable(branches)
        if merged is not None and set(out) - {"anyOf"} <= _ANNOTATIONS:
            # The merged branch replaces the anyOf; the node's own annotations stay on top.
            del out["anyOf"]
            return _over(merged, out)
        out["anyOf"] = _type_checks_first(_absorb_null(branches))
    return out


def _nullable(branches: list[Any]) -> dict[str, Any] | None:
    """The single schema equal to `anyOf: branches`, when they are one X and null."""
    if len(branches) != 2 or _NULL not in branches:
        return None
    other = branches[1] if branches[0] == _NULL else branches[0]
    return _with_null(other)


def _with_null(branch: Any) -> dict[str, Any] | None:
    """`branch` also accepting null, when adding "null" to its type (and enum) says exactly that."""
    if not isinstance(branch, dict) or "type" not in branch:
        return None
    checks = set(branch) - _ANNOTATIONS - {"type"}
    if checks - _TYPE_BOUND - {"enum", "const"}:
        return None  # a keyword that judges every value (allOf, not, ...): keep the anyOf
    kind = branch["type"]
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if not all(isinstance(k, str) for k in kinds):
        return None
    merged = {**branch, "type": kinds if "null" in kinds else [*kinds, "null"]}
    if "const" in merged:
        merged["enum"] = [merged.pop("const"), None]
    elif "enum" in merged and None not in merged["enum"]:
        merged["enum"] = [*merged["enum"], None]
    return merged


def _absorb_null(branches: list[Any]) -> list[Any]:
    """A null branch folded into a branch that checks only a type (`EventName | str | None`)."""
    if _NULL not in branches:
        return branches
    for i, branch in enumerate(branches):
        if branch != _NULL and _type_check_only(branch):
            merged = _with_null(branch)
            if merged is not None:
                rest = [b for j, b in enumerate(branches) if j != i and b != _NULL]
                return [merged, *rest]
    return branches


def _type_check_only(branch: Any) -> bool:
    return isinstance(branch, dict) and set(branch) - _ANNOTATIONS == {"type"}


def _type_checks_first(branches: list[Any]) -> list[Any]:
    return sorted(branches, key=lambda b: not _type_check_only(b))
