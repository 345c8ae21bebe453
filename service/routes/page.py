"""GET /: the search page (one self-contained HTML file: no CDN, works offline)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["page"])

STATIC = Path(__file__).resolve().parent.parent / "static"


@cache
def _page() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The search page: text box, image upload, result grid."""
    return HTMLResponse(_page())
