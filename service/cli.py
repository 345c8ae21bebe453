"""`llm2clip serve`: run the HTTP service with uvicorn.

The port is bound and the bundles are loaded before the server starts, so a port in use or a bad
bundle is an LLM2CLIPError (one line on stderr and exit status 2 from `llm2clip`), not a traceback from
inside the server.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm2clip.cliargs import add_command, positive_int
from llm2clip.errors import LLM2CLIPError, SettingError


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "serve", run)
    _add_arguments(p)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="model bundle folder (written by `llm2clip export`)")
    p.add_argument("--image-index", type=Path, help="image index bundle: answers text queries")
    p.add_argument("--text-index", type=Path, help="caption index bundle: answers image queries")
    p.add_argument("--corpus-root", type=Path,
                   help="folder item images are served from (default: the image index's corpus)")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--threads", type=positive_int, help="ONNX Runtime threads per encoder (default: every core)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8", "fp16"],
                   help="text encoder variant of the bundle (default auto: the fastest this machine runs among "
                        "those that passed their check at export; LLM2CLIP_PRECISION)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip re-hashing the bundle files at startup and on index reloads (faster for large "
                        "bundles)")
    p.add_argument("--reload-interval", type=_seconds, metavar="SECONDS",
                   help="look at each index folder's manifest.json every SECONDS for a new version and swap it in "
                        "without dropping requests; 0 turns watching off (default 5; LLM2CLIP_RELOAD_INTERVAL_S)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default info)")


def _seconds(value: str) -> float:
    """argparse type: a number of seconds, 0 or more."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not seconds >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be at least 0")
    return seconds


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket here and hand it to uvicorn: no window for another process to take
    the port between a check and the server's own bind."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # what uvicorn does: a restart can reuse a port whose old connections sit in TIME_WAIT, but a
        # listening server still makes bind fail
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        "model": args.model, "image_index": args.image_index, "text_index": args.text_index,
        "corpus_root": args.corpus_root, "host": args.host, "port": args.port, "threads": args.threads,
        "precision": args.precision, "reload_interval_s": args.reload_interval,
    }
    if args.no_verify:
        overrides["verify_bundles"] = False
    return overrides


def _settings(overrides: dict[str, Any]) -> Any:
    """Settings from the environment, the overrides given (None values left out) winning."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise LLM2CLIPError(f"invalid setting {field}: {first['msg']}") from None


def _listen(host: str, port: int) -> socket.socket:
    try:
        return _bind(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LLM2CLIPError(f"port {port} on {host} is in use: stop the other server or pass --port") from None
        if exc.errno == errno.EACCES:
            raise LLM2CLIPError(f"port {port} on {host} needs privileges: pass --port above 1023") from None
        raise LLM2CLIPError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _load(settings: Any) -> Any:
    """The bundles and indexes; a wrong setting's message gains the flag that sets it."""
    from service.state import load_resources

    try:
        return load_resources(settings)
    except SettingError as exc:
        flag = "--" + exc.setting.replace("_", "-")
        raise LLM2CLIPError(" ".join(f"{exc} (or pass {flag})".split())) from None
    except LLM2CLIPError as exc:
        raise LLM2CLIPError(" ".join(str(exc).split())) from None


def run(args: argparse.Namespace) -> int:
    """run the HTTP search service (search page, /search, /embed, /metrics)

    Serve a model bundle and its indexes over HTTP. Every flag can also be set in the environment as
    LLM2CLIP_<NAME> (e.g. LLM2CLIP_MODEL, LLM2CLIP_IMAGE_INDEX); flags win. A rebuilt index published into
    its folder is swapped in while the service runs (see --reload-interval); the admin API, POST
    /admin/reload, is on only when LLM2CLIP_ADMIN_TOKEN is set (at least 16 characters; an environment
    variable only, since a flag would show in the process list) and then needs "Authorization: Bearer
    <token>". API keys for clients (LLM2CLIP_API_KEYS, LLM2CLIP_API_KEYS_FILE), per-key rate limits
    (LLM2CLIP_RATE_LIMIT_PER_MINUTE) and the JSON access log on stderr (LLM2CLIP_ACCESS_LOG) are set in
    the environment too; the README's "HTTP API" section explains them. SIGTERM (or Ctrl-C) stops it
    gracefully: no new connections, accepted requests answered or refused with 503 shutting_down, exit
    within about LLM2CLIP_SHUTDOWN_TIMEOUT_S (default 20).
    """
    return serve(_overrides(args), args.log_level)


def _warn_unknown_variables() -> None:
    import os
    import sys

    from service.settings import unknown_variables

    for warning in unknown_variables(os.environ):
        print(f"llm2clip: warning: {warning}", file=sys.stderr)


class _Terminated(Exception):
    """SIGTERM, re-raised by uvicorn after its graceful shutdown."""


@contextmanager
def _terminate_quietly() -> Iterator[None]:
    """uvicorn re-raises the signal that stopped it once it has shut down gracefully: Ctrl-C
    (KeyboardInterrupt) and SIGTERM are then a normal stop, exit status 0, not death by the signal."""

    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated

    import threading

    main = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        yield
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _server(uvicorn: Any, config: Any, drain: Any) -> Any:
    """A uvicorn server that tells the app's ``Drain`` when a signal starts the shutdown: /readyz turns 503
    at once and queued work is failed before uvicorn's deadline (service/shutdown.py)."""

    class DrainingServer(uvicorn.Server):  # type: ignore[misc,name-defined]
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            drain.begin()

    return DrainingServer(config)


def serve(overrides: dict[str, Any], log_level: str = "info") -> int:
    """Serve with ``Settings`` from the environment and ``overrides``; returns the exit code."""
    import uvicorn

    from service.app import create_app

    settings = _settings(overrides)
    _warn_unknown_variables()
    sock = _listen(settings.host, settings.port)
    try:
        resources = _load(settings)
        try:
            app = create_app(settings, resources=resources)
            # our access log (LLM2CLIP_ACCESS_LOG, one JSON object a line) replaces uvicorn's
            config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                                    lifespan="on", access_log=False,
                                    timeout_graceful_shutdown=settings.shutdown_timeout_s)
            server = _server(uvicorn, config, app.state.service.drain)
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            # uvicorn does not announce the address of a socket handed to it; its own logger is the one
            # configured to show at --log-level info
            port = sock.getsockname()[1]
            logging.getLogger("uvicorn.error").info("search page on http://%s:%d/", host, port)
            with _terminate_quietly():
                server.run(sockets=[sock])
        finally:
            resources.close()
        return 0 if server.started else 1
    finally:
        sock.close()
