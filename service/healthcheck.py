"""`python -m service.healthcheck`: exit 0 when this host's service answers /readyz with 200, else 1.

The container images run it as their HEALTHCHECK (slim images have no curl). It reads the same
``LLM2CLIP_HOST`` / ``LLM2CLIP_PORT`` as the service, so a port moved by the environment moves the check too.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def ready_url(environ: dict[str, str] | os._Environ = os.environ) -> str:
    host = environ.get("LLM2CLIP_HOST", "127.0.0.1")
    port = int(environ.get("LLM2CLIP_PORT", "8000"))
    host = "127.0.0.1" if host in WILDCARDS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def check(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """(ready, one line saying why)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (a local http URL)
            body = json.loads(resp.read() or b"{}")
            return True, f"ready: model {body.get('model')}, indexes {body.get('indexes')}"
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read() or b"{}").get("error", {}).get("message", "")
        except ValueError:
            detail = ""
        return False, f"not ready: HTTP {exc.code} {detail}".rstrip()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"not ready: {url} unreachable ({reason})"


def main() -> int:
    ok, line = check(ready_url())
    print(line, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
