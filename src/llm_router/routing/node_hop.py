"""The router's side of the node hop's security (BRIEF §11): what it presents, what it trusts.

A node is reached with the scheme it registered. For ``https`` the router verifies the
node's certificate against ``NODE_CA_FILE`` (else the system store) and, when configured,
presents its own client certificate (mTLS). Every proxied request carries the node's
current secret as ``Authorization: Bearer``; the agent refuses anything else.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

from llm_router.settings import RouterSettings


def node_credential(secret: str) -> Mapping[str, str]:
    """The header that proves to a node that the request comes from its router."""
    return {"authorization": f"Bearer {secret}"} if secret else {}


class NodeTLSConfigError(ValueError):
    """A node TLS setting names a file that cannot be used (the message names the setting)."""


def node_ssl_context(settings: RouterSettings) -> ssl.SSLContext:
    """The context for https nodes, built once per replica (its CA store is parsed once)."""
    try:
        context = ssl.create_default_context(cafile=settings.node_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise NodeTLSConfigError(
            f"node_ca_file: cannot load CA certificates from {settings.node_ca_file!r}: {exc}"
        ) from exc
    if settings.node_client_cert:
        try:
            context.load_cert_chain(settings.node_client_cert, settings.node_client_key)
        except (OSError, ssl.SSLError) as exc:
            raise NodeTLSConfigError(
                "node_client_cert/node_client_key: cannot load the client certificate "
                f"{settings.node_client_cert!r}: {exc}"
            ) from exc
    return context


def tls_failure_reason(exc: BaseException) -> str:
    """Why a TLS connection to a node failed, in words an operator can act on."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
            return f"certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return f"TLS error: {cause.reason}"
        cause = cause.__cause__
    return f"TLS error: {exc}"
