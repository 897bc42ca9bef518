"""Build and run the service: `build_app(config)` is the one path for the CLI, the tests and deploy files.

    client --gRPC or HTTP--> router (ingress) --> prefill pool (full model) --KV over gRPC--> decode pool (decoder)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import yaml
from ray import serve
from ray.serve.config import RequestRouterConfig, gRPCOptions

from overfill.serving.config import APP_IMPORT_PATH, ConfigError, ServiceConfig, config_from_dict, kv_tls_of
from overfill.serving.tracing import check_exporter
from services import tls_front
from services.decode.server import DecodeServer
from services.kv_secret import resolve_kv_secret, share_kv_secret
from services.prefill.server import PrefillServer
from services.router.request_router import LeastQueuedTokensRouter, MostFreeKVRouter
from services.router.grpc_handlers import MAX_REQUEST_BYTES
from services.router.server import GenerationRouter

log = logging.getLogger(__name__)

# What Ray Serve's gRPC proxy serves (on top of reflection, which it serves itself): our API, and the standard
# health service (grpc_health's own registration; the proxy routes Check and Watch to the router's methods).
SERVICER_FUNCTIONS = ["services.router.grpc_handlers.add_generation_servicer",
                      "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"]
ROUTING_STATS_PERIOD_S = 0.5
# Settings of Ray Serve's own processes, read from their environment when they start. The Serve config hands them to
# Serve's controller (`controller_options.runtime_env.env_vars`), and the proxies it starts inherit its environment:
# serve_config_of adds them, and every deploy file carries them, so `serve run` and KubeRay set them as
# `overfill serve` does. Serve applies controller_options only when it starts its controller; a cluster whose Serve
# is already running keeps the settings it started with.
SERVE_PROCESS_ENV = {
    # The gRPC proxy reads messages of up to 2 GiB by default. Ours are at most MAX_REQUEST_BYTES: a larger one is
    # refused in gRPC's core before it is read or parsed (services/router/grpc_handlers.py).
    "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(MAX_REQUEST_BYTES),
}


def build_app(config: ServiceConfig, prefill_server: type = PrefillServer, decode_server: type = DecodeServer):
    """The Serve application: router bound to one handle per pool. `config.kv.secret` must be resolved already
    (services/kv_secret.py).
    `prefill_server`, `decode_server`: the classes the pools run (the fault tests' builder passes subclasses that
    wrap them; nothing in a config chooses them)."""
    if not config.kv.secret:
        raise ValueError("kv.secret must be resolved before building the app (services.kv_secret.resolve_kv_secret)")
    prefill = _pool(prefill_server, "prefill", config.prefill, LeastQueuedTokensRouter,
                    max_ongoing=config.prefill.max_queued_requests + config.prefill.max_batch_size + 8)
    decode = _pool(decode_server, "decode", config.decode, MostFreeKVRouter,
                   max_ongoing=config.decode.num_slots + config.decode.max_waiting + 8)
    # serve.ingress(): the router also answers HTTP, with the ASGI app its `__serve_build_asgi_app__` builds.
    router = serve.deployment(serve.ingress()(GenerationRouter)).options(
        name="router", num_replicas=config.server.num_replicas,
        ray_actor_options={"num_cpus": config.server.num_cpus},
        max_ongoing_requests=config.server.max_ongoing_requests,
        max_queued_requests=config.server.max_queued_requests,  # in the gRPC proxy; beyond: RESOURCE_EXHAUSTED
    )
    return router.bind(config, prefill.bind(config), decode.bind(config))


def actor_options(pool) -> dict:
    """A pool replica's Ray actor options: its CPUs and GPUs (whole GPUs give each replica its own), and the
    accelerator type when the config names one."""
    options = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
    if pool.accelerator_type:
        options["accelerator_type"] = pool.accelerator_type
    return options


def _pool(server_class, name: str, pool, router_class, max_ongoing: int):
    """A pool's deployment: its replicas and resources, and its request router fed by `record_routing_stats`.

    NOTE: back-pressure. `max_ongoing` sits above what the replica's own queue admits, so a full replica answers
    RESOURCE_EXHAUSTED itself (naming its bound). Ray Serve queues a request in the router's handle only while every
    replica is at `max_ongoing` (or none is up, e.g. restarting); that queue is bounded too (`max_queued_requests`),
    beyond it the handle raises BackPressureError, which the router turns into RESOURCE_EXHAUSTED."""
    return serve.deployment(server_class).options(
        name=name, num_replicas=pool.num_replicas,
        ray_actor_options=actor_options(pool),
        max_ongoing_requests=max_ongoing, max_queued_requests=max_ongoing,
        graceful_shutdown_timeout_s=pool.graceful_shutdown_timeout_s,  # drain on upgrade/scale-in, then killed
        request_router_config=RequestRouterConfig(request_router_class=router_class,
                                                  request_routing_stats_period_s=ROUTING_STATS_PERIOD_S),
    )


def prepare_models(config: ServiceConfig) -> None:
    """Convert the embedded model and build the default decoder once, in the driver, before replicas start; refuse
    a decoder cut from another full model (its KV geometry or recorded config differs) before anything is deployed.
    The prefill replicas check the weights too, once they have loaded them (services/prefill/server.py)."""
    from transformers import AutoConfig

    from overfill.decoder_checkpoint import DecoderMismatchError, check_decoder_fits
    from overfill.model_loading import resolve_model
    from overfill.serving.config import decoder_dir

    full_dir = resolve_model(config.models.full)
    decoder = decoder_dir(config.models)
    try:
        check_decoder_fits(decoder, AutoConfig.from_pretrained(full_dir))
    except DecoderMismatchError as e:
        raise ConfigError(f"models.decoder {config.models.decoder!r} does not fit models.full "
                          f"{config.models.full!r}: {e}") from None


def app_builder(args: dict):
    """Ray Serve application builder (`import_path: services.app:app_builder` in deploy/*.yaml, KubeRay's
    serveConfigV2, `serve run`): `args` holds the ServiceConfig sections. The KV secret comes from neither the args
    nor the runtime_env, which Ray logs: see resolve_kv_secret."""
    config = resolve_kv_secret(config_from_dict(args))
    check_exporter(config.tracing)
    kv_tls_of(config.kv)  # KV mutual TLS files: a wrong path fails the deploy, naming the field
    prepare_models(config)
    return build_app(config)


def serve_config_of(config: ServiceConfig, serve_file: dict | None = None, import_path: str = APP_IMPORT_PATH) -> dict:
    """The Ray Serve config (ServeDeploySchema as a dict) that deploys `config`: the deploy file's own Serve
    options (deployments' autoscaling, the application's autoscaling policy, proxy options) with its application's
    args, ports, name and route prefix replaced by `config`'s, our gRPC servicers and Serve's process settings
    (SERVE_PROCESS_ENV; the file's own values win). `import_path`: the application's builder (tests deploy their own,
    which wraps this one's). The KV secret is left out: start_service shares it through the cluster's store."""
    serve_config = copy.deepcopy(serve_file) if serve_file else {"applications": [{"import_path": import_path}]}
    (app,) = [a for a in serve_config["applications"] if a.get("import_path") == import_path]
    args = dataclasses.asdict(config)
    for owned in ("app_name", "route_prefix", "grpc_port", "http_port"):
        del args["server"][owned]
    del args["kv"]["secret"]  # Ray logs an application's args when it builds it
    app.update(name=config.server.app_name, route_prefix=config.server.route_prefix, args=args)
    serve_config["grpc_options"] = {**serve_config.get("grpc_options", {}), "port": config.server.grpc_port,
                                    "grpc_servicer_functions": SERVICER_FUNCTIONS}
    controller_env = ((serve_config.get("controller_options") or {}).get("runtime_env") or {}).get("env_vars") or {}
    serve_config["controller_options"] = {"runtime_env": {"env_vars": {**SERVE_PROCESS_ENV, **controller_env}}}
    serve_config["http_options"] = {"host": "127.0.0.1", **serve_config.get("http_options", {}),
                                    "port": config.server.http_port}
    return serve_config


def start_service(config: ServiceConfig, ray_init_kwargs: dict | None = None, serve_file: dict | None = None,
                  import_path: str = APP_IMPORT_PATH) -> ServiceConfig:
    """Start Ray (local) and Serve with the gRPC proxy, deploy the app through its Ray Serve config (the path
    `serve run deploy/local.yaml` and KubeRay take, so deployment overrides and autoscaling policies apply) and wait
    until it serves. `serve_file` is the parsed deploy file `config` came from, if any; `import_path` the
    application's builder. Returns the config with its resolved secret, which it shares with the application
    through the cluster's store (services/kv_secret.py) before deploying."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = config.with_secret()
    check_exporter(config.tracing)  # an exporter this environment lacks: refused before Ray starts
    kv_tls_of(config.kv)  # so are KV mutual TLS files that cannot be read or do not match
    prepare_models(config)  # once here, not in every replica
    serve_config = serve_config_of(config, serve_file, import_path)
    schema = ServeDeploySchema.model_validate(serve_config)
    started_ray = start_ray(config, ray_init_kwargs, http_host=serve_config["http_options"]["host"])
    try:
        share_kv_secret(config.kv.secret)
        # NOTE: what `serve run CONFIG.yaml` does (ray/serve/scripts.py): start the proxies, hand the config over.
        client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
                             grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
                             controller_options=schema.controller_options)
        client.deploy_apps(schema, _blocking=False)
        wait_until_serving(f"127.0.0.1:{config.server.grpc_port}", config.server.app_name)
        tls_front.start(config.server)  # TLS on server.tls_port when server.tls_cert_file is set
    except BaseException:
        # A half-started service must not outlive its failure: the next start_service would find Ray up, skip
        # ray.init, and Serve would keep the failed proxies and their ports (seen in CI: every later start timed out).
        if started_ray:
            stop_service()
        raise
    return config


def start_ray(config: ServiceConfig, ray_init_kwargs: dict | None = None, http_host: str = "127.0.0.1") -> bool:
    """Start a local Ray cluster for `config` (its metrics port; the service's ports refused if taken), unless one is
    up already (then Serve's proxies keep the ports they were started with). True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    refuse_ports_in_use(config, http_host=http_host)
    for name, value in SERVE_PROCESS_ENV.items():  # every process of the cluster, whoever starts Serve on it
        os.environ.setdefault(name, value)
    ray.init(include_dashboard=False, logging_level=logging.WARNING, _metrics_export_port=config.server.metrics_port,
             **(ray_init_kwargs or {}))
    return True


def refuse_ports_in_use(config: ServiceConfig, http_host: str) -> None:
    """Raise ConfigError naming the field when a port the service binds is taken: otherwise Serve's proxy retries
    its bind forever and the service never becomes healthy, with the reason only in the proxy's log."""
    ports = [("server.grpc_port", "0.0.0.0", config.server.grpc_port),
             ("server.http_port", http_host, config.server.http_port),
             ("server.metrics_port", "0.0.0.0", config.server.metrics_port)]
    if config.server.tls_cert_file:
        ports.append(("server.tls_port", "0.0.0.0", config.server.tls_port))
    for name, host, port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            try:
                probe.bind((host, port))
            except OSError as error:
                raise ConfigError(f"{name} = {port} cannot be bound on {host}: {error.strerror}; "
                                  f"stop what listens there or choose another port") from None


def wait_until_serving(address: str, app_name: str, timeout_s: float = 300.0) -> None:
    """Until Health says SERVING; a failed deployment (bad args, a replica that cannot start) raises its message."""
    from overfill.client import OverFillClient

    deadline = time.monotonic() + timeout_s
    with OverFillClient(address) as client:
        while time.monotonic() < deadline:
            app = serve.status().applications.get(app_name)
            if app is not None and app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"application {app_name} failed to deploy: {app.message}")
            try:
                if client.health() == "SERVING":
                    return
            except Exception:  # noqa: BLE001  proxy or app not up yet
                pass
            time.sleep(0.5)
    raise TimeoutError(f"the service at {address} did not become healthy within {timeout_s:.0f} s")


def stop_service() -> None:
    import ray

    tls_front.stop()
    if ray.is_initialized():  # serve.shutdown() would start a Ray cluster just to find nothing to shut down
        serve.shutdown()
        ray.shutdown()


def openai_base_path(config: ServiceConfig) -> str:
    """The HTTP API's base path (what the OpenAI SDKs take in base_url): /v1 under the application's route prefix."""
    return config.server.route_prefix.rstrip("/") + "/v1"


def read_serve_file(path: str | Path | None) -> dict | None:
    """The parsed deploy file when it is a Ray Serve config (has `applications`), else None."""
    if path is None:
        return None
    data = yaml.safe_load(Path(path).read_text()) or {}
    return data if isinstance(data, dict) and "applications" in data else None


def serve_forever(config: ServiceConfig, serve_file: dict | None = None) -> None:
    """`overfill serve`: start, print how to call it, and shut everything down on SIGINT/SIGTERM."""
    from overfill.client import OverFillClient
    from overfill.serving.auth import AUTH_OFF_WARNING

    stop = threading.Event()

    def stop_on_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    stop_on_signals()
    started = time.perf_counter()
    try:
        start_service(config, serve_file=serve_file)
        stop_on_signals()  # again: ray.init installs a SIGTERM handler of its own, which skipped the clean stop
        address = f"127.0.0.1:{config.server.grpc_port}"
        with OverFillClient(address) as client:
            replicas = dict(client.health_report().replicas)
        tls = bool(config.server.tls_cert_file)
        if tls:  # the public port is the TLS front's; grpc_port must stay unreachable from outside this host
            address = f"127.0.0.1:{config.server.tls_port}"
        kind = "gRPC over TLS" if tls else "gRPC"
        print(f"OverFill Serve ready on {address} ({kind}, overfill.v1.Generation) after "
              f"{time.perf_counter() - started:.0f} s: full {config.models.full}, decoder {config.models.decoder}, "
              f"{replicas.get('prefill', 0)} prefill + {replicas.get('decode', 0)} decode replica(s)", flush=True)
        http_host = serve_config_of(config, serve_file)["http_options"]["host"]
        print(f"OpenAI-compatible HTTP API on http://{http_host}:{config.server.http_port}{openai_base_path(config)} "
              f"(model {config.server.served_model_name or config.models.full!r})", flush=True)
        print(f"metrics: http://127.0.0.1:{config.server.metrics_port}/metrics (Prometheus)", flush=True)
        if not config.auth.enabled:
            print(f"WARNING: {AUTH_OFF_WARNING}", flush=True)
        flags = (" --tls-ca CA.pem" if tls else "") + (" --api-key KEY" if config.auth.enabled else "")
        print(f"try:  .venv/bin/overfill client --address {address}{flags} \"What is the capital of France?\"",
              flush=True)
        print("stop: Ctrl-C", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        print("shutting down ...", flush=True)
        stop_service()
