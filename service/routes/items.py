"""GET /items/{path}: item images, served from the corpus root and from nowhere else."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import ApiError
from service.routes.deps import RuntimeDep
from service.schemas import error_responses

router = APIRouter(prefix="/items", tags=["items"])

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


def resolve_item(root: Path, rel: str) -> Path | None:
    """The image file ``rel`` names under ``root`` (an already resolved folder), or None when it is not
    one: absolute paths, ``..``, symlinks that leave the root and non-image files are all None."""
    if not rel or "\x00" in rel or "\\" in rel:
        return None
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or path.suffix.lower() not in IMAGE_TYPES:
        return None
    try:
        full = (root / path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    # resolve() followed every symlink: what is left must still be under the root, and an image
    if not full.is_relative_to(root) or full.suffix.lower() not in IMAGE_TYPES or not full.is_file():
        return None
    return full


# a plain `def`: FastAPI runs it in a worker thread, so the filesystem calls stay off the event loop
@router.get("/{path:path}", response_class=FileResponse, responses=error_responses(404))
def item(path: str, runtime: RuntimeDep) -> FileResponse:
    """Serve one item image from the corpus root (the `image_url` of a search result)."""
    root = runtime.resources.corpus_root
    if root is None:
        raise ApiError(404, "not_found", "item images are not served: no corpus root is configured")
    full = resolve_item(root, path)
    if full is None:
        raise ApiError(404, "not_found", "no such item image")
    return FileResponse(full, media_type=IMAGE_TYPES[full.suffix.lower()],
                        headers={"Cache-Control": "public, max-age=3600"})
