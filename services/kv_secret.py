"""How the KV secret reaches the application builder without passing through anything Ray logs or shows.

Ray logs an application's `args` when it builds it, and its runtime_env agent logs every `runtime_env` (environment
variables included, in runtime_env_agent.log; the dashboard shows them too). So the secret travels in neither: the
driver that starts the service (`overfill serve`, the tests) writes it to the cluster's internal key-value store
(GCS), in a namespace of ours, and the builder reads it there. Under `serve run` or KubeRay no driver writes it; the
builder then takes $OVERFILL_KV_SECRET from its process environment (a Kubernetes Secret in the pod's environment,
which no Ray component logs), else a fresh random one. The builder binds the resolved secret into every deployment,
so all replicas of one build agree.

Whoever can reach the cluster's GCS can read the store, as they can already run code on the cluster.
"""

from __future__ import annotations

import dataclasses
import os
import secrets

from overfill.serving.config import KV_SECRET_ENV, ServiceConfig

KV_NAMESPACE = "overfill"
KV_SECRET_KEY = b"kv_secret"


def share_kv_secret(secret: str) -> None:
    """Write the secret to the cluster's internal store (the driver, after Ray is up and before the deploy)."""
    from ray.experimental.internal_kv import _internal_kv_put

    if not secret:
        raise ValueError("an empty KV secret cannot be shared: resolve it first (ServiceConfig.with_secret())")
    _internal_kv_put(KV_SECRET_KEY, secret.encode(), overwrite=True, namespace=KV_NAMESPACE)


def shared_kv_secret() -> str:
    """The secret a driver shared on this cluster, or "" when none did (or Ray is not initialized here)."""
    import ray
    from ray.experimental.internal_kv import _internal_kv_get

    if not ray.is_initialized():
        return ""
    value = _internal_kv_get(KV_SECRET_KEY, namespace=KV_NAMESPACE)
    return value.decode() if value else ""


def resolve_kv_secret(config: ServiceConfig) -> ServiceConfig:
    """`config` with its KV secret resolved, for an application builder: the configured `kv.secret`, else the one a
    driver shared on the cluster, else $OVERFILL_KV_SECRET, else a fresh random one."""
    secret = config.kv.secret or shared_kv_secret() or os.environ.get(KV_SECRET_ENV) or secrets.token_hex(16)
    return dataclasses.replace(config, kv=dataclasses.replace(config.kv, secret=secret))
