"""The docker compose fleet (deploy/compose) agrees with the compose spec, the CLI and the settings.

Compose itself is not installed here, so the file is checked against the official compose
JSON schema (vendored by check-jsonschema), and everything the containers are told is
checked against the settings classes they will actually parse it with.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from llm_router.cli import build_parser
from llm_router.gpu import GpuBackend, ModelSpec, format_from_model_id, list_executable_models
from llm_router.node.settings import NodeSettings, SimNodeSettings
from llm_router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
HAPROXY_CFG = COMPOSE_DIR / "haproxy.cfg"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"

# The subcommands of the image's `llm-router` entry point that read settings.
SETTINGS_BY_COMMAND: dict[str, type[BaseSettings]] = {
    "serve": RouterSettings,
    "node": NodeSettings,
    "sim-node": SimNodeSettings,
}

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip()
    return values


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, enough for this file."""

    def one(match: re.Match[str]) -> str:
        expr = match.group(0)[2:-1]
        name = match.group(1)
        if ":-" in expr and not env.get(name):
            return expr.split(":-", 1)[1]
        if name not in env:
            raise AssertionError(f"${{{name}}} is not set by .env.example and has no default")
        return env[name]

    return _VAR_RE.sub(one, value)


def _app_services() -> dict[str, dict[str, Any]]:
    """Services that run the llm-router image."""
    services = _compose()["services"]
    return {name: svc for name, svc in services.items() if "llm-router" in str(svc.get("image"))}


def _env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {str(k): str(v) for k, v in env.items()}


def _settings_env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.tls.yml"])
def test_compose_file_matches_the_compose_spec(name: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_DIR / name),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_fleet_has_redis_three_routers_a_balancer_and_three_backends() -> None:
    services = _compose()["services"]
    assert services["redis"]["image"].startswith("redis:7")
    assert services["router"]["deploy"]["replicas"] == 3
    assert services["router"]["command"][0] == "serve"
    assert "haproxy" in services["lb"]["image"]
    sim_backends = {
        _env_of(svc)["LLM_ROUTER_GPU_BACKEND"]
        for svc in services.values()
        if svc.get("command", [None])[0] == "sim-node"
    }
    assert sim_backends == {"metal", "cuda", "cpu"}


def test_no_image_is_untagged_or_latest() -> None:
    env = _env_example()
    for name, svc in _compose()["services"].items():
        image = _interpolate(str(svc["image"]), env)
        assert ":" in image, f"{name}: image {image!r} has no tag"
        assert not image.endswith(":latest"), f"{name}: pin a version, not latest"


def test_every_app_service_runs_a_cli_command_that_reads_settings() -> None:
    services = _app_services()
    assert services, "no service runs the llm-router image"
    for name, svc in services.items():
        command = svc.get("command")
        assert isinstance(command, list) and command, f"{name}: give command as a list"
        parsed = build_parser().parse_args([str(c) for c in command])
        assert parsed.command in SETTINGS_BY_COMMAND, f"{name}: {command[0]!r} reads no settings"


def test_env_names_are_settings_of_the_command_they_configure() -> None:
    for name, svc in _app_services().items():
        cls = SETTINGS_BY_COMMAND[svc["command"][0]]
        unknown = set(_env_of(svc)) - _settings_env_names(cls)
        assert not unknown, f"{name}: {sorted(unknown)} are not fields of {cls.__name__}"


def test_each_container_environment_parses_into_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env_file = _env_example()
    for name, svc in _app_services().items():
        for key in list(os.environ):
            if key.startswith("LLM_ROUTER_"):
                monkeypatch.delenv(key)
        for key, value in _env_of(svc).items():
            monkeypatch.setenv(key, _interpolate(value, env_file))
        cls = SETTINGS_BY_COMMAND[svc["command"][0]]
        settings = cls()
        if isinstance(settings, RouterSettings):
            assert not settings.embedded, f"{name}: a replica of a fleet needs Redis"
            assert settings.node_keys and settings.admin_keys and settings.api_keys
            assert not settings.auth_disabled


def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = set(_VAR_RE.findall(COMPOSE_FILE.read_text()))
    documented = set(_env_example())
    commented = set(re.findall(r"^#\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    missing = used - documented - commented
    assert not missing, f"add {sorted(missing)} to .env.example"


def test_env_example_holds_placeholders_only() -> None:
    for name, value in _env_example().items():
        if name.endswith(("_KEY", "_KEYS")):
            assert value.startswith("change-me"), f"{name} must be a placeholder"


def test_keys_come_from_env_not_from_the_compose_file() -> None:
    for name, svc in _app_services().items():
        for key, value in _env_of(svc).items():
            if key.endswith(("_KEY", "_KEYS")):
                assert value.startswith("${"), f"{name}: {key} must come from .env"


def test_nodes_heartbeat_through_the_balancer_and_advertise_their_own_address() -> None:
    compose = _compose()
    subnet = ipaddress.ip_network(compose["networks"]["fleet"]["ipam"]["config"][0]["subnet"])
    seen_ips = set()
    for name, svc in _app_services().items():
        if svc["command"][0] not in ("node", "sim-node"):
            continue
        env = _env_of(svc)
        assert env["LLM_ROUTER_ROUTER_URL"] == "http://lb:8080", f"{name}: use the balancer"
        advertised = ipaddress.ip_address(env["LLM_ROUTER_ADVERTISE_IP"])
        assert advertised == ipaddress.ip_address(svc["networks"]["fleet"]["ipv4_address"])
        assert advertised in subnet
        assert advertised not in seen_ips, f"{name}: address shared with another node"
        seen_ips.add(advertised)


def test_models_overlap_and_the_mlx_model_is_executable_on_metal_only() -> None:
    executable: dict[str, set[str]] = {}
    for svc in _app_services().values():
        if svc["command"][0] != "sim-node":
            continue
        env = _env_of(svc)
        backend = GpuBackend(env["LLM_ROUTER_GPU_BACKEND"])
        ids = [m.strip() for m in env["LLM_ROUTER_MODELS"].split(",")]
        specs = [ModelSpec(id=i, format=format_from_model_id(i)) for i in ids]
        executable[backend.value] = set(list_executable_models(specs, backend))
    shared = set.intersection(*executable.values())
    assert shared, "at least one model must run on every backend"
    mlx = {m for models in executable.values() for m in models if "mlx" in m.lower()}
    assert mlx, "the fleet should show an MLX model"
    for model in mlx:
        holders = {backend for backend, models in executable.items() if model in models}
        assert holders == {"metal"}, f"{model} executable on {holders}"


def test_router_stop_grace_outlasts_a_waiting_request() -> None:
    router = _compose()["services"]["router"]
    grace = router["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, f"stop_grace_period {grace!r}: write it in seconds"
    assert int(match.group(1)) > RouterSettings().first_byte_timeout_s


def _haproxy_backend_lines() -> list[str]:
    lines: list[str] = []
    in_backend = False
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not raw.startswith((" ", "\t")):
            in_backend = line.startswith("backend ")
            continue
        if in_backend:
            lines.append(line)
    return lines


def test_haproxy_health_checks_readyz_and_balances_the_router_service() -> None:
    lines = _haproxy_backend_lines()
    assert "option httpchk" in lines or any(ln.startswith("option httpchk ") for ln in lines)
    send = [ln for ln in lines if ln.startswith("http-check send")]
    legacy = [ln for ln in lines if ln.startswith("option httpchk ")]
    assert any("uri /readyz" in ln for ln in send) or any("/readyz" in ln for ln in legacy)
    assert "http-check expect status 200" in lines
    servers = [ln for ln in lines if ln.startswith(("server ", "server-template "))]
    assert servers, "no router servers in the backend"
    router_port = _env_of(_compose()["services"]["router"])["LLM_ROUTER_PORT"]
    for line in servers:
        assert f"router:{router_port}" in line, line
        assert " check" in line or any(
            ln.startswith("default-server") and " check" in ln for ln in lines
        ), line


def test_haproxy_accepts_its_configuration() -> None:
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is not installed (apt-get install haproxy)"
    result = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


TLS_OVERRIDE = COMPOSE_DIR / "docker-compose.tls.yml"


def test_tls_override_secures_every_node_hop_with_settings_of_each_command() -> None:
    base = _app_services()
    override = yaml.safe_load(TLS_OVERRIDE.read_text())["services"]
    nodes = {name for name, svc in base.items() if svc["command"][0] != "serve"}
    assert set(override) == {"router", *nodes}
    for name, svc in override.items():
        cls = SETTINGS_BY_COMMAND[base[name]["command"][0]]
        env = _env_of(svc)
        assert set(env) <= _settings_env_names(cls), name
        mounted = {v.split(":")[1] for v in svc["volumes"]}
        assert all(v.endswith(":ro") for v in svc["volumes"]), name
        assert set(env.values()) <= mounted, f"{name} names a file it does not mount"
        assert "/certs/ca.key" not in mounted, f"{name} must not hold the CA's key"
    router = _env_of(override["router"])
    assert {"LLM_ROUTER_NODE_CA_FILE", "LLM_ROUTER_NODE_CLIENT_CERT"} <= set(router)
    for name in nodes:
        assert "LLM_ROUTER_TLS_CLIENT_CA" in _env_of(override[name]), name


def test_no_key_or_certificate_is_committed_under_deploy() -> None:
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file() and path.suffix in {".pem", ".key", ".crt", ".p12"}:
            raise AssertionError(f"{path} must not be committed")
        if path.is_file() and path.suffix in {".yml", ".yaml", ".cfg", ".example"}:
            assert "PRIVATE KEY-----" not in path.read_text(), path
