"""Operations: liveness, readiness, Prometheus metrics, and what is loaded."""

from __future__ import annotations

from fastapi import APIRouter, Response

from llm2clip.index import MODALITIES, IndexBundle
from service.errors import ApiError
from service.indexes import ServedIndex
from service.routes.deps import RuntimeDep, ServiceDep
from service.schemas import Health, IndexInfo, IndexSearch, Info, Readiness, error_responses
from service.shutdown import shutting_down

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers HTTP."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=error_responses(503))
async def readyz(service: ServiceDep) -> Readiness:
    """Readiness: the model, every configured index and the encoder workers are up."""
    runtime = service.runtime
    if service.drain.draining:
        # from SIGTERM on: the load balancer should stop sending here while accepted requests finish
        raise shutting_down()
    if runtime is None or not runtime.alive:
        raise ApiError(503, "not_ready", "the service is starting or stopping")
    indexes = runtime.resources.indexes
    # one read of each slot: a count and a version from two sides of a reload would not belong together
    served = {m: indexes.served(m) for m in MODALITIES}
    return Readiness(status="ready", model=runtime.resources.bundle.fingerprint[:12],
                     indexes={m: s.bundle.count if s else None for m, s in served.items()},
                     versions={m: s.version if s else None for m, s in served.items()},
                     search={m: _search(s.bundle) if s else None for m, s in served.items()})


def _search(bundle: IndexBundle) -> IndexSearch:
    tuning = bundle.manifest.get("tuning") or {}
    return IndexSearch(factory=bundle.manifest.get("factory"), search_params=bundle.manifest.get("search_params") or {},
                       recall_at_10=tuning.get("recall_at_10"), target_recall=tuning.get("target_recall"),
                       device=bundle.device, mmap=bool(getattr(bundle, "mmapped", False)))


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics of this process (text exposition format)."""
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/info", response_model=Info, responses=error_responses(503))
async def info(runtime: RuntimeDep) -> Info:
    """The loaded model and indexes, and the request limits."""
    bundle = runtime.resources.bundle
    manifest = bundle.manifest
    settings = runtime.settings
    served = {m: runtime.resources.indexes.served(m) for m in MODALITIES}
    return Info(
        model={
            "fingerprint": bundle.fingerprint,
            "embed_dim": bundle.embed_dim,
            "max_tokens": bundle.max_tokens,
            "image_size": bundle.preprocess.size,
            "precision": manifest.get("precision"),
            "created": manifest.get("created"),
        },
        indexes={m: _index_info(s) if s else None for m, s in served.items()},
        corpus_root=runtime.resources.corpus_root is not None,
        limits={
            "max_k": settings.max_k,
            "max_text_chars": settings.max_text_chars,
            "max_image_bytes": settings.max_image_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_batch": settings.max_batch,
            "max_request_bytes": settings.max_request_bytes,
        },
    )


def _index_info(served: ServedIndex) -> IndexInfo:
    index = served.bundle
    return IndexInfo(count=index.count, dim=index.dim, factory=index.manifest.get("factory"),
                     metric=index.manifest.get("metric"), model=index.model_fingerprint[:12],
                     version=served.version, created=index.manifest.get("created"))
