"""schemathesis hooks for this service's schema (schemathesis.toml loads them for `st run` from the repository
root, and tests/service/test_service_contract.py through it).

One hook, working around a limit of schemathesis 4.32.5 rather than of the schema: its coverage phase cannot
check a multipart body that holds a file against the schema's `oneOf` (a file part is "Binary", which its
validator cannot read, so such a body always counts as valid), and so it sends a /search form with both `text`
and `image` as *valid* data. The schema says exactly one of them (`oneOf`), and the service answers such a form
422; the hook drops only those misjudged positive cases. Negative cases are untouched.
"""

from __future__ import annotations

import schemathesis


@schemathesis.hook("filter_case").apply_to(method="POST", path="/search")
def one_query_per_form(ctx: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    body = case.body
    positive = case.meta is None or case.meta.generation.mode.is_positive
    both = isinstance(body, dict) and "text" in body and "image" in body
    return not (positive and both and (case.media_type or "").startswith("multipart/"))
