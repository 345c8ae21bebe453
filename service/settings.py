"""Service settings: one pydantic-settings class, read from ``LLM2CLIP_*`` environment variables.

Nested groups use ``__``: ``LLM2CLIP_BATCH__QUEUE_SIZE=512``. CLI flags override the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm2clip.encoders.base import DEFAULT_MAX_BATCH_TOKENS

MiB = 1024 * 1024
MIN_TOKEN_CHARS = 16
# what templates and tutorials put in a token field: a deploy that kept one must not open the admin API
PLACEHOLDER_TOKENS = frozenset({"changethis", "changeme", "change-me", "secret", "token", "admin", "password",
                                "your-token-here", "xxxxxxxxxxxxxxxx"})


class BatchSettings(BaseModel):
    """The request batchers in front of the encoders (one for text, one for images)."""

    queue_size: int = Field(
        default=256, ge=1,
        description="Items (texts or images) queued or being encoded per encoder; past it, requests get 429.",
    )
    batch_size: int = Field(default=32, ge=1, description="Most images, or texts, one encoder call takes.")
    max_batch_tokens: int = Field(
        default=DEFAULT_MAX_BATCH_TOKENS, ge=16,
        description="Token budget of one text encoder call: texts are grouped by length so that rows x the "
                    "longest row stays under it (text-embeddings-inference's max-batch-tokens).",
    )
    max_queue_tokens: int = Field(
        default=2 * DEFAULT_MAX_BATCH_TOKENS, ge=16,
        description="Tokens of the texts queued or being encoded; past it, requests get 429. This bounds a "
                    "text query's wait: about this many tokens over the encoder's tokens/s.",
    )
    wait_ms: float = Field(
        default=2.0, ge=0, le=1000,
        description="How long the worker waits for more requests to fill a batch once one has arrived.",
    )


class Settings(BaseSettings):
    """Everything the service reads at startup; each field is ``LLM2CLIP_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="LLM2CLIP_", env_nested_delimiter="__", extra="ignore", validate_default=True,
    )

    # bundles
    model: Path | None = Field(
        default=None, description="Model bundle folder (written by `llm2clip export`). Required.",
    )
    image_index: Path | None = Field(
        default=None,
        description="Image index bundle: answers text queries. Optional; without it /search refuses "
                    "queries that target images.",
    )
    text_index: Path | None = Field(
        default=None,
        description="Caption index bundle: answers image queries. Optional; without it /search refuses "
                    "queries that target captions.",
    )
    corpus_root: Path | None = Field(
        default=None,
        description="Folder the item images are served from (/items/...). Default: the image index "
                    "manifest's build.corpus_root, when it names a folder that exists.",
    )
    verify_bundles: bool = Field(
        default=True,
        description="Re-hash every bundle file at startup and on each index reload (seconds for a large "
                    "bundle) to catch corruption.",
    )
    reload_interval_s: float = Field(
        default=5.0, ge=0, le=86_400,
        description="Seconds between looks at each index folder's manifest.json for a new version (a stat, "
                    "then its hash when that changed). A new version is loaded in the background, checked "
                    "(verified, same model, dim and modality) and swapped in without failing a request; a "
                    "refused one leaves the old serving. 0: no watching (POST /admin/reload still works).",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description=f"Bearer token of the admin API (POST /admin/reload), at least {MIN_TOKEN_CHARS} "
                    "characters. Unset or empty: the admin API is off and answers 404.",
    )

    # server and runtime
    host: str = Field(default="127.0.0.1", description="Interface to listen on (0.0.0.0: every interface).")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on.")
    threads: int | None = Field(
        default=None, ge=1,
        description="ONNX Runtime intra-op threads per encoder session (default: all cores).",
    )
    providers: list[str] | None = Field(
        default=None,
        description="ONNX Runtime execution providers in preference order (a JSON list in the environment). "
                    "Default: the best available of TensorRT, CUDA, CPU.",
    )
    precision: Literal["auto", "fp32", "bf16", "int8", "fp16"] = Field(
        default="auto",
        description="Text encoder variant of the bundle to serve. auto: the best one this machine runs (CUDA: "
                    "fp16 then bf16; a CPU with VNNI/AMX: int8; with AVX-512 BF16 and torch: bf16; else fp32) "
                    "among those that passed their check at export. A variant named here that failed its "
                    "check, or that the bundle lacks, stops the service at startup.",
    )
    index_device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="Where FAISS searches: auto (a GPU when faiss-gpu sees one and the index type has a GPU "
                    "version, else the CPU), gpu (refuse to start without one) or cpu.",
    )
    index_mmap: bool = Field(
        default=False,
        description="Memory-map IVF indexes' inverted lists instead of reading them (FAISS maps nothing else): "
                    "an index larger than RAM is served from the page cache. Other index types are read.",
    )
    query_cache_size: int = Field(
        default=10_000, ge=0,
        description="Text query embeddings kept (LRU, keyed by normalised text, model and precision); 0: off.",
    )
    batch: BatchSettings = Field(default_factory=lambda: BatchSettings(), description="Batching per encoder.")

    # request limits: each is checked before any expensive work
    max_text_chars: int = Field(
        default=8000, ge=1, description="Longest query or /embed text, in characters (413 above).",
    )
    max_image_bytes: int = Field(
        default=10 * MiB, ge=1, description="Largest encoded image, in bytes (413 above).",
    )
    max_image_pixels: int = Field(
        default=40_000_000, ge=1,
        description="Most pixels (width x height) of an image, read from its header before decoding: "
                    "guards against decompression bombs (413 above).",
    )
    max_k: int = Field(default=100, ge=1, description="Largest k a /search may ask for (422 above).")
    max_batch: int = Field(
        default=64, ge=1, description="Most texts, and most images, per /embed call (422 above).",
    )
    max_request_bytes: int = Field(
        default=16 * MiB, ge=1024,
        description="Largest request body in bytes, sent with Content-Length or streamed (413 above).",
    )

    @field_validator("admin_token")
    @classmethod
    def _real_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or not token.get_secret_value():
            return None  # LLM2CLIP_ADMIN_TOKEN= (empty) in a compose file means off
        value = token.get_secret_value()
        if value.strip().lower() in PLACEHOLDER_TOKENS or len(set(value)) < 4:
            raise ValueError("is a placeholder: generate one, e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'")
        if len(value) < MIN_TOKEN_CHARS:
            raise ValueError(f"must have at least {MIN_TOKEN_CHARS} characters")
        if value != value.strip():
            raise ValueError("has leading or trailing whitespace")
        return token


# LLM2CLIP_* variables read outside these settings (the model cache, the Fashion-MNIST folder, TensorRT's engine
# cache, the demo's work folder): not settings, but not typos either
OTHER_VARIABLES = frozenset({"LLM2CLIP_CACHE", "LLM2CLIP_FASHION_MNIST", "LLM2CLIP_TRT_CACHE", "LLM2CLIP_WORKDIR"})


def setting_variables() -> frozenset[str]:
    """Every LLM2CLIP_* variable Settings reads (nested groups joined with ``__``)."""
    names = set()
    for name, field in Settings.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            names |= {f"LLM2CLIP_{name}__{n}".upper() for n in sub.model_fields}
        else:
            names.add(f"LLM2CLIP_{name}".upper())
    return frozenset(names)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each LLM2CLIP_* variable in ``environ`` that nothing reads (Settings ignores them, so a
    misspelt one would silently keep its default), with the closest real name."""
    import difflib

    known = setting_variables() | OTHER_VARIABLES
    warnings = []
    for name in sorted(n for n in environ if n.upper().startswith("LLM2CLIP_") and n.upper() not in known):
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings
