"""Request and response models of the HTTP API.

Limits that depend on the settings (largest k, batch size) are checked with the validation context
(``{"max_k": ..., "max_batch": ...}``), so one model serves every configuration.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

Modality = Literal["image", "text"]


def _no_nulls(data: Any) -> Any:
    """Optional fields are left out, never null: the OpenAPI schema types each as a string (or integer)."""
    if isinstance(data, dict):
        nulls = [name for name, value in data.items() if value is None]
        if nulls:
            raise PydanticCustomError("null_field", "{fields}: leave the field out instead of sending null",
                                      {"fields": ", ".join(map(str, nulls))})
    return data


class SearchRequest(BaseModel):
    """A /search query: exactly one of ``text`` or an image (``image_base64`` here, or a multipart file)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        default=None, description="Query text; long captions are fine (cut at the model's max tokens).",
    )
    image_base64: str | None = Field(
        default=None, description="Query image, base64 (a data: URL prefix is accepted).",
    )
    k: int = Field(default=10, ge=1, description="Number of results (at most the service's max_k).")
    target: Modality | None = Field(
        default=None,
        description="Index to search: 'image' or 'text'. Default: text queries search images, image "
                    "queries search captions.",
    )

    _no_nulls = model_validator(mode="before")(_no_nulls)

    @field_validator("k", mode="before")
    @classmethod
    def _integral_float(cls, k: Any) -> Any:
        # JSON Schema's integer includes 10.0; the JSON body is validated strictly (no "10" for 10)
        return int(k) if isinstance(k, float) and k.is_integer() else k

    @field_validator("k")
    @classmethod
    def _k_at_most_max(cls, k: int, info: ValidationInfo) -> int:
        max_k = (info.context or {}).get("max_k")
        if max_k is not None and k > max_k:
            raise PydanticCustomError("less_than_equal", "Input should be less than or equal to {max_k}",
                                      {"max_k": max_k})
        return k


class EmbedRequest(BaseModel):
    """An /embed request: texts and/or base64 images (or multipart ``texts`` fields and ``images`` files)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(default_factory=list, description="Texts to embed.")
    images_base64: list[str] = Field(default_factory=list, description="Images to embed, base64 each.")

    _no_nulls = model_validator(mode="before")(_no_nulls)


class SearchHit(BaseModel):
    rank: int = Field(description="1 for the best match.")
    score: float = Field(description="Cosine similarity between the query and the item embedding.")
    id: str = Field(description="Item id in the indexed dataset.")
    uri: str | None = Field(description="Image path relative to the corpus root.")
    caption: str | None = Field(
        description="The matched caption (text index) or the item's caption (image index).",
    )
    caption_key: str | None = Field(
        default=None, description="Which caption of the item matched ('long', 'short', ...).",
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="The item's metadata from the dataset.")
    image_url: str | None = Field(
        default=None, description="Where this service serves the item image, if it does.",
    )


class QueryInfo(BaseModel):
    modality: Modality = Field(description="What the query was.")
    target: Modality = Field(description="Which index was searched.")
    tokens: int | None = Field(default=None, description="Tokens the text encoder saw (text queries).")
    truncated: bool = Field(
        default=False, description="The text was longer than the model's max tokens and was cut.",
    )
    kept_chars: int | None = Field(
        default=None, ge=0,
        description="When the text was cut: how many of its characters (as sent, in Unicode NFC form) the model "
                    "read. Everything from there on did not count; null when nothing was cut.",
    )


class SearchResponse(BaseModel):
    results: list[SearchHit]
    query: QueryInfo
    took_ms: float = Field(description="Server time for this request, decoding to response.")
    model: str = Field(description="First 12 characters of the model bundle fingerprint.")
    index_version: str = Field(
        description="Version of the index searched (a hash of its manifest, as /readyz and /info show): every "
                    "result of one response comes from this one version, also across a reload.",
    )


class EmbedResponse(BaseModel):
    text_embeddings: list[list[float]] = Field(description="One unit vector per text, in request order.")
    image_embeddings: list[list[float]] = Field(description="One unit vector per image, in request order.")
    text_truncated: list[bool] = Field(description="Per text: longer than the model's max tokens and cut.")
    dim: int
    model: str = Field(description="Full model bundle fingerprint: embeddings compare only within one.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. 'invalid_request', 'overloaded'.")
    message: str = Field(description="What went wrong and what to change.")
    request_id: str = Field(description="The request's id, as in the X-Request-ID response header and the access log.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str


class IndexSearch(BaseModel):
    """How an index answers: its FAISS type, the search parameters applied to every query, and the recall@10
    they reached against exact search when it was built (on corpus vectors held out of it)."""

    factory: str | None
    search_params: dict[str, Any]
    recall_at_10: float | None = Field(description="Measured at build time; 1.0 for exact (Flat) indexes.")
    target_recall: float | None
    device: str = Field(description="cpu, or gpu when FAISS holds the index on a GPU.")
    mmap: bool = Field(description="Inverted lists memory-mapped from disk (IVF indexes, LLM2CLIP_INDEX_MMAP).")


class Readiness(BaseModel):
    status: str
    model: str
    indexes: dict[str, int | None] = Field(description="Rows per index; null for an index not configured.")
    versions: dict[str, str | None] = Field(
        description="Version served per index (a hash of its manifest.json); null for an index not configured.",
    )
    search: dict[str, IndexSearch | None] = Field(
        default_factory=dict, description="How each index searches; null for an index not configured.",
    )


class IndexInfo(BaseModel):
    count: int
    dim: int
    factory: str | None
    metric: str | None
    model: str
    version: str = Field(description="A hash of the index's manifest.json: changes with every rebuild.")
    created: str | None = Field(default=None, description="When the index bundle was written (UTC, ISO 8601).")


class ReloadRequest(BaseModel):
    """A POST /admin/reload body (optional): which index to look at; default every configured one."""

    model_config = ConfigDict(extra="forbid")

    index: Modality | None = Field(default=None, description="'image' or 'text'; default: both.")


class ReloadedIndex(BaseModel):
    status: Literal["loaded", "unchanged"] = Field(
        description="loaded: a new version was checked and swapped in; unchanged: the folder holds the version "
                    "already served.",
    )
    version: str = Field(description="The version served now.")
    count: int = Field(description="Rows of the index served now.")
    previous: str | None = Field(default=None, description="loaded: the version it replaced.")


class ReloadResponse(BaseModel):
    indexes: dict[str, ReloadedIndex]


class Info(BaseModel):
    model: dict[str, Any]
    indexes: dict[str, IndexInfo | None]
    corpus_root: bool = Field(description="Whether item images are served under /items/.")
    limits: dict[str, int]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error statuses a route can answer."""
    return {s: {"model": ErrorBody} for s in statuses}
