"""docker-compose.yml is valid and agrees with the code: every LLM2CLIP_* variable it sets is one the code reads
(Settings ignores unknown ones, so a typo would be silently dropped), the values validate, the repo paths it
mounts exist, and ports, health checks, commands and the Prometheus and HAProxy targets match the service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from compose_project import (
    COMPOSE,
    GPU_OVERRIDE,
    REPO,
    compose_config,
    direct_env_names,
    load_yaml,
    mounts,
    service_environment,
    settings_env_names,
)

from llm2clip_cli.demo import DEFAULT_WORKDIR, artifact_paths
from llm2clip_cli.main import build_parser


@pytest.fixture(scope="module")
def project() -> dict:
    return compose_config()


@pytest.fixture(scope="module")
def gpu_project() -> dict:
    return compose_config(COMPOSE, GPU_OVERRIDE)


def app_routes() -> set[str]:
    from service.app import create_app

    return set(create_app().openapi()["paths"])


def container_ports(service: dict) -> list[int]:
    """The container side of each published port (docker-compose v1 writes `host:published:target/tcp`)."""
    out = []
    for p in service.get("ports") or []:
        out.append(int(p["target"]) if isinstance(p, dict) else int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return out


def test_services_profiles_and_volumes(project):
    services = project["services"]
    assert set(services) == {"api", "proxy", "index-builder", "seed", "prometheus", "grafana"}
    assert services["index-builder"]["profiles"] == ["build"] and services["seed"]["profiles"] == ["seed"]
    assert {"models", "indexes", "corpus", "prometheus-data", "grafana-data"} <= set(project["volumes"])
    for name in ("api", "proxy", "prometheus", "grafana"):
        assert services[name]["restart"] == "unless-stopped", name
    # the builder writes the volume the api reads; the api reads it only
    assert ("indexes", "/indexes", False) in mounts(services["index-builder"])
    assert ("indexes", "/indexes", True) in mounts(services["api"])


def test_every_llm2clip_variable_is_read_by_the_code(project, gpu_project):
    known = settings_env_names() | direct_env_names()
    assert "LLM2CLIP_MODEL" in known and "LLM2CLIP_BATCH__QUEUE_SIZE" in known and "LLM2CLIP_TRT_CACHE" in known
    for proj in (project, gpu_project):
        for name, service in proj["services"].items():
            unknown = {k for k in service_environment(service) if k.startswith("LLM2CLIP_")} - known
            assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_the_variables_read_outside_settings_are_the_ones_listed():
    """service.settings.OTHER_VARIABLES keeps `llm2clip serve` from warning about real variables."""
    from service.settings import OTHER_VARIABLES

    assert direct_env_names() - settings_env_names() == OTHER_VARIABLES


def test_the_api_environment_validates_as_settings(gpu_project, monkeypatch):
    from service.settings import Settings

    for key, value in service_environment(gpu_project["services"]["api"]).items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert (str(s.model), str(s.image_index), str(s.text_index)) == ("/models/bundle", "/indexes/image",
                                                                   "/indexes/text")
    assert s.host == "0.0.0.0" and s.port == 8000 and s.index_device == "auto"


def test_repo_paths_mounted_exist_and_seed_defaults_are_the_demos(project):
    for name, service in project["services"].items():
        for source, _target, _ in mounts(service):
            if not source.startswith("/"):
                continue  # a named volume
            rel = Path(source).relative_to(REPO)
            if name == "seed":
                # the demo's outputs: they exist once `llm2clip demo` has run
                demo = artifact_paths(Path(DEFAULT_WORKDIR))
                assert rel in (demo["bundle"], demo["test"]), rel
            else:
                assert (REPO / rel).exists(), f"{name} mounts {rel}, which is not in the repository"


def test_ports_health_checks_and_targets_match_the_service(project):
    from service.healthcheck import ready_url

    routes = app_routes()
    api = project["services"]["api"]
    env = service_environment(api)
    port = int(env["LLM2CLIP_PORT"])
    assert [str(p) for p in api["expose"]] == [str(port)]
    assert api["healthcheck"]["test"] == ["CMD", "python", "-m", "service.healthcheck"]
    url = ready_url(env)
    assert url == f"http://127.0.0.1:{port}/readyz" and "/readyz" in routes
    # the proxy forwards its published port to the api's, and checks replicas on a real route
    assert container_ports(project["services"]["proxy"]) == [8000]
    cfg = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert f"api:{port} " in cfg and "bind :8000" in cfg
    check = cfg.split("option httpchk GET ", 1)[1].split()[0]
    assert check in routes
    # Prometheus scrapes every api replica on the api's port, on a route that exists
    prom = load_yaml(REPO / "deploy" / "prometheus" / "prometheus.yml")
    job = prom["scrape_configs"][0]
    assert job["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": port}]
    assert job["metrics_path"] in routes
    # Grafana's datasource points at the prometheus service; its dashboards are where compose mounts them
    ds = load_yaml(REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert container_ports(project["services"]["prometheus"]) == [9090]
    grafana = project["services"]["grafana"]
    home = service_environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dash_mount = {t: s for s, t, _ in mounts(grafana)}["/etc/grafana/dashboards"]
    assert (Path(dash_mount) / Path(home).relative_to("/etc/grafana/dashboards")).is_file()


def test_the_builder_writes_what_the_api_serves(project):
    builder, api = project["services"]["index-builder"], project["services"]["api"]
    args = build_parser().parse_args(builder["command"][1:])  # the real CLI accepts it
    env = service_environment(api)
    assert str(args.model) == env["LLM2CLIP_MODEL"] and str(args.data) == env["LLM2CLIP_CORPUS_ROOT"]
    assert args.modality == "both"
    assert {str(args.out / "image"), str(args.out / "text")} == {env["LLM2CLIP_IMAGE_INDEX"],
                                                                env["LLM2CLIP_TEXT_INDEX"]}
    # the seed step fills what the builder reads
    seed_cmd = project["services"]["seed"]["command"][-1]
    assert "/models/bundle" in seed_cmd and "/corpus/" in seed_cmd


def test_gpu_override_reserves_nvidia_devices_and_picks_the_cuda_image(gpu_project):
    for name in ("api", "index-builder"):
        service = gpu_project["services"][name]
        assert service["build"]["target"] == "cuda" and service["image"].endswith(":cuda")
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # the rest of the service is the base file's
    assert gpu_project["services"]["api"]["command"] == ["llm2clip", "serve"]


def test_haproxy_config_is_valid():
    exe = shutil.which("haproxy")
    assert exe, "haproxy is not on PATH: scripts/setup.sh installs it (Debian package haproxy)"
    done = subprocess.run([exe, "-c", "-f", str(REPO / "deploy" / "haproxy" / "haproxy.cfg")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_variable_would_be_caught(tmp_path):
    """The agreement check is not vacuous: a compose file with a misspelt setting is reported."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("LLM2CLIP_TEXT_INDEX:", "LLM2CLIP_TEXT_INDEXES:"))
    services = compose_config(bad)["services"]
    # the LLM2CLIP_* ones, as the check above (FORWARDED_ALLOW_IPS is uvicorn's)
    names = {k for k in service_environment(services["api"]) if k.startswith("LLM2CLIP_")}
    unknown = names - settings_env_names() - direct_env_names()
    assert unknown == {"LLM2CLIP_TEXT_INDEXES"}
