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
from service.keys import MIN_TOKEN_CHARS, check_secret, parse_keys, read_keys_file

MiB = 1024 * 1024


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
        # a refused secret must not be echoed in the error (uvicorn --factory prints it whole)
        hide_input_in_errors=True,
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
    shutdown_timeout_s: float = Field(
        default=20.0, gt=0, le=3600,
        description="On SIGTERM: seconds the requests already accepted get to finish (new connections are "
                    "refused from the signal on; /readyz answers 503). A little before the end, requests still "
                    "queued for an encoder get 503 shutting_down; the process exits within about this long.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description=f"Bearer token of the admin API (POST /admin/reload), at least {MIN_TOKEN_CHARS} "
                    "characters. Unset or empty: the admin API is off and answers 404. Separate from the API "
                    "keys: a client's key must not let it swap the served indexes.",
    )

    # clients: API keys, rate limits, access log
    api_keys: SecretStr | None = Field(
        default=None,
        description="API keys clients send as `Authorization: Bearer <key>`: a JSON list or a comma-separated "
                    "string of `key` or `id:key` entries (the id names the client in logs and rate limits; "
                    f"default: a sha256 prefix of the key). Each at least {MIN_TOKEN_CHARS} characters. Unset, "
                    "with no keys file: the API is open.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A file of API keys, one `id:key` or `key` a line (`#` comments), re-read when it changes: "
                    "keys rotate without a restart. Used together with LLM2CLIP_API_KEYS.",
    )
    metrics_auth: bool = Field(
        default=False, description="GET /metrics needs an API key too (when keys are configured).",
    )
    rate_limit_per_minute: int = Field(
        default=0, ge=0,
        description="Requests a minute each API key (each client IP when no keys are configured) may make to "
                    "/search and /embed, as a token bucket; past it, 429 rate_limited. 0: no limit.",
    )
    rate_limit_burst: int | None = Field(
        default=None, ge=1,
        description="Requests a key may make at once before the per-minute rate applies "
                    "(default: a sixth of the per-minute rate, at least 1).",
    )
    access_log: Literal["json", "off"] = Field(
        default="json",
        description="One JSON object a line on stderr per request (logger llm2clip.access), or off.",
    )
    log_queries: bool = Field(
        default=False, description="Put the query text in the access log (off: it may be personal data).",
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
    query_cache_bytes: int = Field(
        default=64 * MiB, ge=0,
        description="Memory the text query cache may hold, in bytes (texts, vectors and bookkeeping; "
                    "llm2clip_query_cache_bytes shows it): the least recently used entries go first.",
    )
    memory_trim_idle_s: float = Field(
        default=1.0, ge=0, le=3600,
        description="When an encoder has had no work for this many seconds after a call, hand the heap's "
                    "free memory back to the system (glibc malloc_trim; llm2clip_heap_trims and "
                    "llm2clip_heap_trimmed_bytes show it): resident memory then falls back after a burst of "
                    "large batches instead of keeping their high-water mark. 0: never.",
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
        check_secret(token.get_secret_value())
        return token

    @field_validator("api_keys")
    @classmethod
    def _real_keys(cls, keys: SecretStr | None) -> SecretStr | None:
        if keys is None or not keys.get_secret_value().strip():
            return None
        if not parse_keys(keys.get_secret_value()):
            raise ValueError("lists no key")
        return keys

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys_file")
    @classmethod
    def _readable_keys_file(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            keys = read_keys_file(path)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not keys:
            raise ValueError(f"{path} lists no key: add one (`id:key` a line) or unset the setting")
        return path

    @property
    def rate_burst(self) -> int:
        return self.rate_limit_burst or max(1, self.rate_limit_per_minute // 6)


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
