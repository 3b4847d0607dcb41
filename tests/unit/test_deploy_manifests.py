"""The Kubernetes manifests (deploy/k8s, kustomize base + overlays) are valid and coherent.

Every resource is validated against the Kubernetes OpenAPI schemas shipped by
kubernetes-validate (offline, strict: unknown fields fail), then the pieces are checked
against each other (selectors, probes, references) and against the settings classes the
containers parse their environment with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic_settings import BaseSettings

from llm_router.cli import build_parser
from llm_router.node.settings import NodeSettings, SimNodeSettings
from llm_router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())

# The oldest Kubernetes the manifests promise to work on, and the newest schema shipped.
K8S_VERSIONS = ("1.29.0", "1.37.0")

SETTINGS_BY_COMMAND: dict[str, type[BaseSettings]] = {
    "serve": RouterSettings,
    "node": NodeSettings,
    "sim-node": SimNodeSettings,
}

ROUTER_LABELS = {"app.kubernetes.io/name": "llm-router", "app.kubernetes.io/component": "router"}


@dataclass(frozen=True)
class Doc:
    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def _load_all(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    return docs


def _kustomization(directory: Path) -> dict[str, Any]:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _resources(directory: Path) -> list[Doc]:
    """Every resource a kustomization pulls in, following directory references."""
    docs: list[Doc] = []
    for entry in _kustomization(directory).get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            docs.extend(_resources(target))
        else:
            docs.extend(Doc(target, body) for body in _load_all(target))
    return docs


def _patches(directory: Path) -> list[Doc]:
    docs: list[Doc] = []
    for patch in _kustomization(directory).get("patches", []):
        path = directory / patch["path"]
        docs.extend(Doc(path, body) for body in _load_all(path))
    return docs


def _all_resources() -> list[Doc]:
    seen: dict[tuple[Path, str, str], Doc] = {}
    for directory in (BASE, *OVERLAYS):
        for doc in _resources(directory):
            seen[(doc.path, doc.kind, doc.name)] = doc
    return list(seen.values())


def _of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.kind == kind]


def _pod_spec(deployment: Doc) -> dict[str, Any]:
    spec = deployment.body["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def _containers(deployment: Doc) -> Iterator[dict[str, Any]]:
    yield from _pod_spec(deployment)["containers"]


def _command(container: dict[str, Any]) -> str | None:
    args = container.get("args") or []
    return str(args[0]) if args else None


def _is_ours(container: dict[str, Any]) -> bool:
    return "llm-router" in str(container["image"]).rsplit("/", 1)[-1]


def _is_router(deployment: Doc) -> bool:
    return any(_command(c) == "serve" for c in _containers(deployment))


def _kustomize_dirs() -> list[Path]:
    return [BASE, *OVERLAYS]


def test_overlays_exist() -> None:
    assert {p.name for p in OVERLAYS} >= {"dev", "production"}


@pytest.mark.parametrize("directory", _kustomize_dirs(), ids=lambda p: p.name)
def test_kustomization_lists_only_files_that_exist(directory: Path) -> None:
    kust = _kustomization(directory)
    for entry in kust.get("resources", []):
        target = directory / entry
        assert target.exists(), f"{directory.name}: resource {entry} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{entry} is not a kustomization"
    for patch in kust.get("patches", []):
        assert (directory / patch["path"]).is_file(), f"patch {patch['path']} does not exist"


@pytest.mark.parametrize("directory", _kustomize_dirs(), ids=lambda p: p.name)
def test_every_manifest_in_a_kustomization_directory_is_used(directory: Path) -> None:
    kust = _kustomization(directory)
    used = {Path(e).name for e in kust.get("resources", [])}
    used |= {Path(p["path"]).name for p in kust.get("patches", [])}
    files = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert files <= used, f"{directory.name}: {sorted(files - used)} are not referenced"


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_patches_target_resources_of_the_build(directory: Path) -> None:
    resources = {(d.kind, d.name): d for d in _resources(directory)}
    for patch in _patches(directory):
        target = resources.get((patch.kind, patch.name))
        assert target, f"{patch.path.name}: no {patch.kind}/{patch.name} to patch"
        if patch.kind == "Deployment":
            names = {c["name"] for c in _containers(target)}
            for container in _containers(patch):
                assert container["name"] in names, f"{patch.path.name}: {container['name']}"


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_overlay_sets_a_namespace_it_creates(directory: Path) -> None:
    namespace = _kustomization(directory).get("namespace")
    assert namespace
    created = {d.name for d in _of_kind(_resources(directory), "Namespace")}
    assert namespace in created


@pytest.mark.parametrize("directory", _kustomize_dirs(), ids=lambda p: p.name)
def test_every_project_image_gets_a_pinned_tag(directory: Path) -> None:
    """Untagged project images in a build must be pinned by an `images` entry."""
    pinned = set()
    for d in (directory, BASE) if directory != BASE else (BASE,):
        pinned |= {i["name"] for i in _kustomization(d).get("images", []) if i.get("newTag")}
    for deployment in _of_kind(_resources(directory), "Deployment"):
        for container in _containers(deployment):
            image = str(container["image"])
            assert not image.endswith(":latest"), f"{deployment.name}: no latest tags"
            if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
                assert image in pinned, f"{deployment.name}: {image} would run as latest"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_resources_match_the_kubernetes_schema(version: str) -> None:
    docs = _all_resources()
    assert len(docs) >= 8
    for doc in docs:
        try:
            kubernetes_validate.validate(doc.body, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc.path.name}: {doc.kind}/{doc.name}: {exc.message}")


def test_there_is_one_router_deployment_with_three_replicas() -> None:
    routers = [d for d in _of_kind(_all_resources(), "Deployment") if _is_router(d)]
    assert len(routers) == 1
    assert routers[0].body["spec"]["replicas"] == 3
    assert routers[0].body["spec"]["selector"]["matchLabels"] == ROUTER_LABELS


def _port_names(container: dict[str, Any]) -> set[str | int]:
    names: set[str | int] = set()
    for port in container.get("ports", []):
        names.add(port["containerPort"])
        if "name" in port:
            names.add(port["name"])
    return names


@pytest.mark.parametrize(
    "deployment",
    _of_kind(_all_resources(), "Deployment"),
    ids=lambda d: f"{d.path.parent.name}/{d.name}",
)
def test_deployment_has_probes_resources_and_a_locked_down_security_context(
    deployment: Doc,
) -> None:
    pod = _pod_spec(deployment)
    pod_sc = pod.get("securityContext", {})
    assert pod.get("automountServiceAccountToken") is False
    # A Service named llm-router injects LLM_ROUTER_PORT=tcp://... into every pod of the
    # namespace, which would override the PORT setting of routers and nodes.
    assert pod.get("enableServiceLinks") is False
    for container in pod["containers"]:
        label = f"{deployment.name}/{container['name']}"
        sc = container.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, label
        assert sc.get("readOnlyRootFilesystem") is True, label
        assert sc.get("allowPrivilegeEscalation") is False, label
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), label
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), label
        assert "memory" in resources.get("limits", {}), label
        for probe_name in ("readinessProbe", "livenessProbe"):
            probe = container.get(probe_name)
            assert probe, f"{label}: no {probe_name}"
            for handler in ("httpGet", "tcpSocket"):
                if handler in probe:
                    assert probe[handler]["port"] in _port_names(container), label


def test_router_probes_healthz_for_liveness_and_readyz_for_readiness() -> None:
    (router,) = [d for d in _of_kind(_all_resources(), "Deployment") if _is_router(d)]
    (container,) = list(_containers(router))
    port = RouterSettings().port
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        ref = container[probe]["httpGet"]["port"]
        assert declared.get(ref, ref) == port


def test_router_grace_period_covers_prestop_and_a_waiting_request() -> None:
    (router,) = [d for d in _of_kind(_all_resources(), "Deployment") if _is_router(d)]
    pod = _pod_spec(router)
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop > 0, "without a preStop pause, requests still arrive after SIGTERM"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pre_stop + RouterSettings().first_byte_timeout_s


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_pdb_and_service_select_the_router_pods() -> None:
    docs = _all_resources()
    (router,) = [d for d in _of_kind(docs, "Deployment") if _is_router(d)]
    pod_labels = router.body["spec"]["template"]["metadata"]["labels"]
    (pdb,) = _of_kind(docs, "PodDisruptionBudget")
    assert _matches(pdb.body["spec"]["selector"]["matchLabels"], pod_labels)
    spec = pdb.body["spec"]
    assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable", 0) >= 2
    services = [s for s in _of_kind(docs, "Service") if s.name == "llm-router"]
    (service,) = services
    assert _matches(service.body["spec"]["selector"], pod_labels)
    (container,) = list(_containers(router))
    for port in service.body["spec"]["ports"]:
        assert port["targetPort"] in _port_names(container)


def test_every_service_selects_some_pods() -> None:
    docs = _all_resources()
    pod_labels = [
        d.body["spec"]["template"]["metadata"]["labels"] for d in _of_kind(docs, "Deployment")
    ]
    for service in _of_kind(docs, "Service"):
        selector = service.body["spec"]["selector"]
        assert any(_matches(selector, labels) for labels in pod_labels), service.name


def test_hpa_scales_the_router_deployment_on_cpu() -> None:
    docs = _all_resources()
    (router,) = [d for d in _of_kind(docs, "Deployment") if _is_router(d)]
    (hpa,) = _of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa.body["apiVersion"] == "autoscaling/v2"
    target = hpa.body["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        router.name,
    )
    assert hpa.body["spec"]["minReplicas"] >= router.body["spec"]["replicas"]
    assert hpa.body["spec"]["maxReplicas"] > hpa.body["spec"]["minReplicas"]
    metrics = hpa.body["spec"]["metrics"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)


def test_secrets_hold_placeholders_only() -> None:
    docs = _all_resources()
    for directory in OVERLAYS:
        docs += _patches(directory)
    for secret in _of_kind(docs, "Secret"):
        for key, value in secret.body.get("stringData", {}).items():
            if key.endswith("_KEYS"):
                for one in str(value).split(","):
                    assert one.startswith(("change-me", "dev-")), f"{secret.path.name}: {key}"
        assert "data" not in secret.body, "write examples as stringData, never encoded"


def _build_env(directory: Path, container: dict[str, Any]) -> dict[str, str]:
    """The environment a container of this build starts with (patches applied)."""
    resources = _resources(directory)
    by_ref = {(d.kind, d.name): d.body for d in resources}
    for patch in _patches(directory):
        if patch.kind in ("ConfigMap", "Secret"):
            merged = dict(by_ref[(patch.kind, patch.name)])
            for field in ("data", "stringData"):
                merged[field] = {**merged.get(field, {}), **patch.body.get(field, {})}
            by_ref[(patch.kind, patch.name)] = merged

    def values(kind: str, name: str) -> dict[str, str]:
        body = by_ref.get((kind, name))
        assert body is not None, f"{kind}/{name} is referenced but not in the build"
        return {
            str(k): str(v)
            for k, v in {**body.get("data", {}), **body.get("stringData", {})}.items()
        }

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(values("ConfigMap", source["configMapRef"]["name"]))
        if "secretRef" in source:
            env.update(values("Secret", source["secretRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            secret = values("Secret", ref["secretKeyRef"]["name"])
            assert ref["secretKeyRef"]["key"] in secret, item["name"]
            env[item["name"]] = secret[ref["secretKeyRef"]["key"]]
        elif "fieldRef" in ref:
            # status.podIP and friends: any plausible value will do for parsing.
            env[item["name"]] = "10.0.0.7"
    return env


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_container_environments_are_settings_of_their_command(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployments = _of_kind(_resources(directory), "Deployment")
    checked = 0
    for deployment in deployments:
        for container in _containers(deployment):
            if not _is_ours(container):
                continue
            argv = [str(a) for a in container.get("command", []) + container.get("args", [])]
            command = build_parser().parse_args(argv).command
            cls = SETTINGS_BY_COMMAND.get(command)
            assert cls, f"{deployment.name}: unknown subcommand {command!r}"
            env = _build_env(directory, container)
            prefix = str(cls.model_config.get("env_prefix", ""))
            known = {f"{prefix}{f}".upper() for f in cls.model_fields}
            unknown = set(env) - known
            assert not unknown, f"{deployment.name}: {sorted(unknown)} not in {cls.__name__}"
            for key in list(os.environ):
                if key.startswith(prefix):
                    monkeypatch.delenv(key)
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            settings = cls()
            if isinstance(settings, RouterSettings):
                assert not settings.embedded, "a replicated router needs Redis"
                assert not settings.auth_disabled
                assert settings.node_keys and settings.admin_keys and settings.api_keys
            checked += 1
    assert checked >= 1


def test_dev_sim_nodes_cover_three_backends_and_reach_the_router_service() -> None:
    dev = K8S / "overlays" / "dev"
    backends = set()
    for deployment in _of_kind(_resources(dev), "Deployment"):
        for container in _containers(deployment):
            if _command(container) != "sim-node":
                continue
            env = {e["name"]: e for e in container["env"]}
            backends.add(env["LLM_ROUTER_GPU_BACKEND"]["value"])
            assert env["LLM_ROUTER_ROUTER_URL"]["value"] == "http://llm-router:8080"
            assert env["LLM_ROUTER_ADVERTISE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == (
                "status.podIP"
            )
    assert backends == {"metal", "cuda", "cpu"}


def test_production_points_at_an_external_ha_redis() -> None:
    production = K8S / "overlays" / "production"
    secrets = [p for p in _patches(production) if p.kind == "Secret"]
    urls = [s.body["stringData"]["LLM_ROUTER_REDIS_URL"] for s in secrets]
    assert urls and all(u.startswith(("redis+sentinel://", "redis+cluster://")) for u in urls)
    assert not [d for d in _resources(production) if d.name == "redis"]
