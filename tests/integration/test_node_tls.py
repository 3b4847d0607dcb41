"""TLS on the node hop (BRIEF §11): https agents, verification by the router, mTLS.

Certificates are made at test time with openssl: one CA the router trusts, one it does not.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from integration.certs import CertAuthority, Leaf
from integration.procs import Cluster, SimNode, wait_until

MODEL = "tls-model"


@dataclass(frozen=True)
class Pki:
    ca: CertAuthority
    node: Leaf
    router_client: Leaf
    rogue: Leaf


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory: Path = tmp_path_factory.mktemp("pki")
    ca = CertAuthority.create(directory, "fleet-ca")
    rogue_ca = CertAuthority.create(directory, "rogue-ca")
    return Pki(
        ca=ca,
        node=ca.issue(directory, "node"),
        router_client=ca.issue(directory, "router"),
        rogue=rogue_ca.issue(directory, "rogue-node"),
    )


def tls_node(cluster: Cluster, leaf: Leaf, **options: object) -> SimNode:
    return cluster.start_node([MODEL], tls_cert=leaf.cert, tls_key=leaf.key, **options)


def chat(url: str) -> httpx.Response:
    # A new conversation each time: no affinity keeps it on the node of the last one.
    body = {"model": MODEL, "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=15)


def test_an_untrusted_node_certificate_is_failed_over_with_its_reason(
    cluster: Cluster, pki: Pki
) -> None:
    (router,) = cluster.up(1, node_ca_file=pki.ca.cert, log_level="info")
    good, rogue = tls_node(cluster, pki.node), tls_node(cluster, pki.rogue)
    ids = cluster.wait_all()
    assert {r["scheme"] for r in cluster.nodes_view()} == {"https"}

    served_by: set[str] = set()

    def rogue_excluded() -> bool:
        response = chat(router.url)
        assert response.status_code == 200, response.text
        served_by.add(response.headers["x-llm-router-node"])
        record = cluster.record_of(rogue)
        return record is not None and MODEL in record["excluded_models"]

    wait_until(rogue_excluded, 20, "the untrusted node to be excluded", interval_s=0)
    assert served_by == {ids[good.machine_name]}
    logged = cluster.read_logs()
    failure = [line for line in logged.splitlines() if ids[rogue.machine_name] in line]
    assert any("certificate verify failed" in line for line in failure), logged[-3000:]


def test_mutual_tls(cluster: Cluster, pki: Pki) -> None:
    client_cert = {
        "node_client_cert": pki.router_client.cert,
        "node_client_key": pki.router_client.key,
    }
    (with_cert,) = cluster.up(1, node_ca_file=pki.ca.cert, **client_cert)
    node = tls_node(cluster, pki.node, tls_client_ca=pki.ca.cert)
    node_id = cluster.wait_online(node)
    url = f"https://127.0.0.1:{node.port}"

    served = chat(with_cert.url)
    assert served.status_code == 200, served.text
    assert served.headers["x-llm-router-node"] == node_id

    # Straight to the node: the handshake needs a certificate of the fleet's CA.
    anonymous = ssl.create_default_context(cafile=pki.ca.cert)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", verify=anonymous, timeout=5)
    known = ssl.create_default_context(cafile=pki.ca.cert)
    known.load_cert_chain(pki.router_client.cert, pki.router_client.key)
    probe = httpx.get(f"{url}/healthz", verify=known, timeout=5)
    assert probe.status_code == 200

    # A replica without the client certificate cannot use the node.
    (without_cert,) = cluster.up(1, node_ca_file=pki.ca.cert, log_level="info")
    refused = chat(without_cert.url)
    assert refused.status_code == 502, refused.text
    # Under TLS 1.3 the node's refusal comes after the handshake: to the replica it is
    # a node that hung up before answering.
    assert f"node {node_id} closed the connection" in refused.json()["error"]["message"]


def test_registration_reads_an_https_nodes_models_over_verified_tls(
    cluster: Cluster, pki: Pki
) -> None:
    (router,) = cluster.up(1, node_ca_file=pki.ca.cert)
    node = tls_node(cluster, pki.node)
    cluster.wait_online(node)
    # A registration without executable_models: the router asks the node API itself.
    body = {
        "machine_name": "listed-over-tls",
        "ip_address": "127.0.0.1",
        "runtime_port": 9,
        "node_api_port": node.port,
        "gpu_backend": "cpu",
    }
    listed = httpx.post(f"{router.url}/v0/nodes", json={**body, "scheme": "https"}, timeout=10)
    assert listed.status_code == 201, listed.text
    record = httpx.get(f"{router.url}/v0/nodes/{listed.json()['node_id']}", timeout=5).json()
    assert record["executable_models"] == [MODEL] and record["scheme"] == "https"
    plain = httpx.post(f"{router.url}/v0/nodes", json={**body, "machine_name": "plain"}, timeout=10)
    assert plain.status_code == 502, plain.text
