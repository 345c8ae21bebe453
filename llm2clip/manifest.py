"""Read-only attributes of a bundle that come straight from its manifest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ManifestField(Generic[T]):
    """``owner.manifest[key][key2]...`` converted by ``kind``: ``count = ManifestField("count", kind=int)``.
    A missing key raises KeyError as a dict lookup would; bundles are checked when they are loaded."""

    def __init__(self, *keys: str, kind: Callable[[Any], T]) -> None:
        self.keys = keys
        self.kind = kind

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        value = obj.manifest
        for key in self.keys:
            value = value[key]
        return self.kind(value)
