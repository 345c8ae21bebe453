"""HTTP routes; ``api_router`` holds them all."""

from fastapi import APIRouter

from service.routes import admin, embed, items, ops, page, search

api_router = APIRouter()
for module in (search, embed, items, ops, admin, page):
    api_router.include_router(module.router)

__all__ = ["api_router"]
