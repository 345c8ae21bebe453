"""Route dependencies: the service state reaches handlers as ``Annotated`` parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.shutdown import shutting_down
from service.state import Runtime, ServiceState


def get_service(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[ServiceState, Depends(get_service)]


def get_runtime(service: ServiceDep) -> Runtime:
    runtime = service.runtime
    if runtime is None or not runtime.alive:
        if service.drain.draining:
            raise shutting_down()
        raise ApiError(503, "not_ready", "the service is starting or stopping: retry shortly")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
