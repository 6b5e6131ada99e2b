"""OpenAPI schemas for responses and bodies that are msgspec structs.

The hot paths encode and decode with msgspec; their documented shapes come from the same structs,
so the document cannot drift from what is sent.
"""

from __future__ import annotations

from typing import Any

import msgspec


def json_schema(struct: Any) -> dict[str, Any]:
    """The JSON schema of a struct (or any type msgspec knows), nested structs written inline."""
    (root,), components = msgspec.json.schema_components([struct], ref_template="{name}")

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return inline(components[node["$ref"]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(root)  # type: ignore[no-any-return]


def json_response(struct: Any, description: str, **extra: Any) -> dict[str, Any]:
    """An OpenAPI response object: `struct` as application/json, plus e.g. headers."""
    return {
        "description": description,
        "content": {"application/json": {"schema": json_schema(struct)}},
        **extra,
    }
