"""What the deploy tests read from docker-compose.yml and the code: the compose services as
`docker-compose config` resolves them, the LLM2CLIP_* names the code reads, and the mapping that runs a
service's command on this machine with its volumes replaced by folders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "docker-compose.gpu.yml"
CODE_DIRS = ("llm2clip", "llm2clip_cli", "service", "index_builder", "training")


def compose_config(*files: Path) -> dict:
    """The project as docker-compose resolves it (interpolation, anchors, overrides merged)."""
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not on PATH: scripts/setup.sh installs it (Debian package docker-compose)"
    args = [exe, "--project-directory", str(REPO)]
    for f in files or (COMPOSE,):
        args += ["-f", str(f)]
    # the variables a user may set are left at their defaults whatever this shell has
    env = {k: v for k, v in os.environ.items()
           if k not in {"PUBLISH_ADDRESS", "API_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT", "SEED_BUNDLE",
                        "SEED_CORPUS", "GRAFANA_ADMIN_PASSWORD", "ADMIN_TOKEN", "API_KEYS",
                        "RATE_LIMIT_PER_MINUTE"}}
    done = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def settings_env_names() -> set[str]:
    """Every LLM2CLIP_* variable the service's Settings reads (nested groups joined with __)."""
    from service.settings import setting_variables

    return set(setting_variables())


def direct_env_names() -> set[str]:
    """LLM2CLIP_* variables the code reads from os.environ itself (outside Settings)."""
    found: set[str] = set()
    for d in CODE_DIRS:
        for path in (REPO / d).rglob("*.py"):
            found |= set(re.findall(r"environ\.get\(\s*\"(LLM2CLIP_[A-Z0-9_]+)\"", path.read_text()))
    return found


def service_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, container path, read-only) of each volume; a named volume's source is its name."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append((str(v.get("source")), v["target"], bool(v.get("read_only"))))
        else:
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


class Remap:
    """Runs a compose service's command here: each container mount point becomes a host folder, in argv,
    in the environment and inside shell strings (`sh -c "... /models/bundle ..."`)."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders
        points = sorted(folders, key=len, reverse=True)
        self.pattern = re.compile(r"(?<![\w/.])(" + "|".join(re.escape(p) for p in points) + r")(?=/|\b|$)")

    def __call__(self, text: str) -> str:
        return self.pattern.sub(lambda m: str(self.folders[m.group(1)]), text)

    def command(self, argv: list[str]) -> list[str]:
        """The command with `llm2clip` / `python` as this environment's."""
        exe = {"llm2clip": str(Path(sys.executable).parent / "llm2clip"), "python": sys.executable}
        return [exe.get(argv[0], argv[0]), *(self(a) for a in argv[1:])]

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        return {k: self(v) for k, v in env.items()}


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())
