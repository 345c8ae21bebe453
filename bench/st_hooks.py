"""schemathesis hooks for this service's schema (schemathesis.toml loads them for `st run` from the repository
root, and tests/service/test_service_contract.py through it).

One hook, working around a limit of schemathesis 4.32.5 rather than of the schema: it cannot check a multipart
body that holds a file against the schema (a file part is "Binary", which its validator cannot read), so it
takes such a body's `oneOf` on trust. Its coverage phase then sends a /search form with both `text` and `image`
as *valid* data, and its fuzzing phase a form with only an `image` as *invalid* data (a mutation "removed
`text`", though the other `oneOf` branch holds). The hook judges those bodies itself, with each file read as a
non-empty (or empty) string, and drops a case whose data does not match its label. Every other case is sent.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import schemathesis
from schemathesis.transport.serialization import Binary


def _as_strings(value: Any) -> tuple[Any, bool]:
    """``value`` with each file as a string of its emptiness, and whether it held a file."""
    if isinstance(value, (Binary, bytes)):
        data = value.data if isinstance(value, Binary) else value
        return ("x" if data else ""), True
    if isinstance(value, list):
        items = [_as_strings(v) for v in value]
        return [v for v, _ in items], any(f for _, f in items)
    return value, False


@schemathesis.hook("filter_case")
def files_judged(ctx: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    body, meta = case.body, case.meta
    if meta is None or not isinstance(body, dict) or not (case.media_type or "").startswith("multipart/"):
        return True
    judged = {name: _as_strings(value) for name, value in body.items()}
    if not any(has_file for _, has_file in judged.values()):
        return True  # schemathesis judged it itself
    definition = case.operation.get_body_for_media_type(case.media_type)
    schema = getattr(definition, "resolved_schema", None) if definition is not None else None
    if not isinstance(schema, dict):
        return True
    valid = jsonschema_rs.validator_for(schema).is_valid({name: v for name, (v, _) in judged.items()})
    return valid == meta.generation.mode.is_positive
