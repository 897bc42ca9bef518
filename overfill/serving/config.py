"""The service configuration: one YAML file mapped one to one onto these dataclasses, validated with errors that
name the field, and overridable from the command line (`--set prefill.num_replicas=2`)."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the field."""


KV_TRANSPORTS = ("grpc", "nccl", "gloo", "inprocess")  # overfill.transport backends (inprocess: tests only)
TRACING_EXPORTERS = ("otlp", "console", "file")  # where overfill/serving/tracing.py sends spans
MAX_PROMPT_CHARS = 1 << 20  # server.max_prompt_chars at most: the public ports read no request larger than a prompt
#                             of this many 4-byte characters and the rest of its fields (grpc_handlers.MAX_REQUEST_BYTES)


@dataclass
class ModelsConfig:
    full: str = "smollm2-135m"            # a Hugging Face directory or the alias smollm2-135m
    decoder: str = "default"              # a decoder directory, or `default` (the embedded model's)
    dtype: str = "auto"                   # auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    device: str = "cpu"                   # cpu or cuda


@dataclass
class PoolResources:
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0                 # GPUs per replica (Ray actor option); whole GPUs keep pools apart
    torch_threads: int = 0                # CPU threads for the model; 0 = the pool's num_cpus, rounded, at least 1
    graceful_shutdown_timeout_s: float = 20.0  # a stopping replica (upgrade, scale-in) finishes its requests and
                                          # hands over its KV for this long before Ray Serve kills it
    accelerator_type: str | None = None   # Ray accelerator type for the replicas (e.g. H100, A100, L4); needs num_gpus


@dataclass
class PrefillPoolConfig(PoolResources):
    max_batch_tokens: int = 4096          # prompt tokens per prefill batch
    max_batch_size: int = 8               # prompts per prefill batch
    max_queued_requests: int = 256        # requests waiting beyond the next batch's free slots; beyond:
                                          # RESOURCE_EXHAUSTED
    max_queued_tokens: int = 32768        # prompt tokens waiting for a batch (bounds TTFT); beyond: RESOURCE_EXHAUSTED
    max_leased_tokens: int = 65536        # prompt tokens whose KV this replica holds or will hold (queued, running,
                                          # leased until pulled): its KV memory bound; beyond: RESOURCE_EXHAUSTED
    onednn_cache_entries: int = 64        # CPU: oneDNN's per-shape caches, bounded (engine/linear.py); prompts of
                                          # every length would otherwise grow the replica by hundreds of MiB
    max_batch_s: float = 60.0             # a prefill batch running longer fails its requests with DEADLINE_EXCEEDED,
                                          # and the replica refuses new ones (UNAVAILABLE) until the batch returns
    unhealthy_batch_s: float = 300.0      # a prefill batch running longer fails the replica's health check: Serve
                                          # replaces it (a device that never returns)
    max_ticket_wait_s: float = 120.0      # the router waits this long at most for a prefill's ticket (queue and
                                          # batch), then DEADLINE_EXCEEDED; the call is cancelled and its KV freed


@dataclass
class DecodePoolConfig(PoolResources):
    num_slots: int = 16                   # sequences decoded together per replica (its KV budget)
    max_waiting: int = 64                 # requests waiting for a slot per replica; beyond: RESOURCE_EXHAUSTED
    cuda_graphs: bool = True              # replay decode steps from CUDA graphs (models.device cuda only)
    slow_step_s: float = 2.0              # a decode step running longer: the replica reports it (the decode router
                                          # ranks it last) and refuses new requests the pool can serve elsewhere
    max_step_s: float = 60.0              # a decode step running longer fails its requests with DEADLINE_EXCEEDED
    unhealthy_step_s: float = 300.0       # a decode step running longer fails the replica's health check: Serve
                                          # replaces it (a device that never returns)
    admission_retry_s: float = 10.0       # the router asks other decode replicas for a request one refused at
                                          # admission (full, or held by a step) for at most this long (0: never)
    stream_messages_per_s: float = 0.0    # token messages per second a replica sends at most, shared by its running
                                          # streams (overfill/serving/stream_pacing.py); 0: one per token


@dataclass
class KVConfig:
    transport: str = "grpc"               # grpc, nccl (GPU, P and D on separate GPUs), gloo (CPU); inprocess: tests
    lease_ttl_s: float = 30.0             # an unclaimed prefill KV is freed after this
    bind_host: str = "127.0.0.1"          # cluster-internal address the KV service listens on; node-ip = the node's
    secret: str = ""                      # shared secret; empty: $OVERFILL_KV_SECRET, else a random one per start
    chunk_bytes: int = 2 << 20
    transfer_timeout_s: float = 30.0      # a KV pull (or a process-group send/receive) slower than this: UNAVAILABLE
    # Mutual TLS for the KV service (overfill/transport/tls.py); all three set, or none (plaintext). PEM files every
    # replica can read: this replica's certificate (server and client: every pod holds the same), its key, and the
    # cluster-internal CA bundle a peer's certificate must chain to.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    tls_server_name: str = ""             # the DNS name in the certificate's SAN that clients check the server's
                                          # certificate against (pod IPs change); "": the dialled host


@dataclass
class ServerConfig:
    grpc_port: int = 9000
    http_port: int = 8000                 # the OpenAI-compatible HTTP API (Ray Serve's HTTP proxy; 127.0.0.1 unless
                                          # the deploy file's http_options.host says otherwise)
    metrics_port: int = 8080              # Prometheus /metrics of the local Ray cluster `overfill serve` starts
    app_name: str = "overfill"
    route_prefix: str = "/"               # where the HTTP API is mounted: /v1/chat/completions under "/"
    served_model_name: str = ""           # the model id of the HTTP API (/v1/models, `model`); "": models.full
    max_context_tokens: int = 2048        # prompt + generated tokens per request
    max_tokens_limit: int = 1024          # the largest max_tokens accepted
    default_max_tokens: int = 128
    max_prompt_chars: int = MAX_PROMPT_CHARS  # characters of a prompt, or of a chat's contents together; beyond:
                                          # INVALID_ARGUMENT, before anything is tokenized
    max_chat_messages: int = 1024         # messages in a chat; beyond: INVALID_ARGUMENT, before the template renders
    max_tokenizer_queue: int = 64         # requests being tokenized or waiting for the router's tokenizer thread;
                                          # beyond: RESOURCE_EXHAUSTED
    num_cpus: float = 0.5                 # for the router (ingress) replica
    num_replicas: int = 1
    tls_cert_file: str = ""               # PEM certificate chain; set with tls_key_file: TLS front on tls_port
    tls_key_file: str = ""                # PEM private key of tls_cert_file
    tls_port: int = 9443                  # public TLS port; with TLS on, keep grpc_port unreachable from outside
    log_prompts: bool = False             # debugging aid: write prompts and outputs to the logs (never by default)
    max_ongoing_requests: int = 2048      # requests in flight per router replica (Ray Serve's limit)
    max_queued_requests: int = 256        # requests the gRPC proxy holds for a busy router; beyond: RESOURCE_EXHAUSTED


@dataclass
class AuthConfig:
    """API keys for the public gRPC API (overfill/serving/auth.py): `authorization: Bearer <key>` metadata."""
    enabled: bool = True                  # false only for a service no one else can reach (deploy/local.yaml)
    api_keys_file: str = ""               # one key per line, `#` comments; read by the router replica
    api_keys_env: str = "OVERFILL_API_KEYS"  # env var with comma-separated keys; "" = none
    # Generation requests one key may have in flight per router replica (0 = no limit); past it RESOURCE_EXHAUSTED
    # (HTTP 429), so one key cannot take every slot and waiting place. Counted only when auth.enabled.
    max_requests_per_key: int = 0


@dataclass
class TracingConfig:
    """OpenTelemetry spans per request (overfill/serving/tracing.py): the router's request with its tokenize, prefill
    and decode, the prefill replica's batch and the decode replica's KV pull, in one trace. README "Tracing"."""
    enabled: bool = False                 # off: no tracer, no exporter, no work on the request path
    exporter: str = "otlp"                # otlp: OTLP/HTTP (protobuf) to `endpoint`; console: each replica's stdout
                                          # (its Ray log); file: JSON lines appended to `file`, one per span
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # exporter otlp: the collector's OTLP/HTTP traces URL
                                          # (headers such as an API key: $OTEL_EXPORTER_OTLP_HEADERS, never here)
    file: str = ""                        # exporter file: an absolute path every replica on the node appends to
    sample_ratio: float = 1.0             # share of requests traced, chosen by trace id in the router; the prefill
                                          # and decode replicas follow the router's choice
    service_name: str = "overfill"        # service.name of every span (the replica's pool is overfill.component)


@dataclass
class ServiceConfig:
    models: ModelsConfig = field(default_factory=ModelsConfig)
    prefill: PrefillPoolConfig = field(default_factory=PrefillPoolConfig)
    decode: DecodePoolConfig = field(default_factory=DecodePoolConfig)
    kv: KVConfig = field(default_factory=KVConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    def validate(self) -> ServiceConfig:
        checks = [
            ("models.dtype", self.models.dtype in ("auto", "float32", "bfloat16", "float16"),
             "one of auto, float32, bfloat16, float16"),
            ("models.device", self.models.device == "cpu" or self.models.device.startswith("cuda"), "cpu or cuda[:N]"),
            ("kv.transport", self.kv.transport in KV_TRANSPORTS, f"one of {', '.join(KV_TRANSPORTS)}"),
            ("kv.transport", self.kv.transport != "nccl" or self.models.device.startswith("cuda"),
             "grpc or gloo unless models.device is cuda (nccl moves KV from GPU to GPU)"),
            ("kv.transfer_timeout_s", self.kv.transfer_timeout_s > 0, "> 0"),
            ("kv.lease_ttl_s", self.kv.lease_ttl_s > 0, "> 0"),
            ("kv.chunk_bytes", 0 < self.kv.chunk_bytes <= 2 << 20, "in (0, 2097152]"),
            ("server.grpc_port", 0 < self.server.grpc_port < 65536, "in [1, 65535]"),
            ("server.http_port", 0 < self.server.http_port < 65536, "in [1, 65535]"),
            ("server.metrics_port", 0 < self.server.metrics_port < 65536, "in [1, 65535]"),
            ("server.max_context_tokens", self.server.max_context_tokens >= 2, ">= 2"),
            ("server.max_tokens_limit", 1 <= self.server.max_tokens_limit < self.server.max_context_tokens,
             f"in [1, server.max_context_tokens - 1 = {self.server.max_context_tokens - 1}]"),
            ("server.default_max_tokens", 1 <= self.server.default_max_tokens <= self.server.max_tokens_limit,
             "in [1, server.max_tokens_limit]"),
            ("server.max_prompt_chars", 1 <= self.server.max_prompt_chars <= MAX_PROMPT_CHARS,
             f"in [1, {MAX_PROMPT_CHARS}] (a larger request is refused on the wire before it is read)"),
            ("server.max_chat_messages", self.server.max_chat_messages >= 1, ">= 1"),
            ("server.max_tokenizer_queue", self.server.max_tokenizer_queue >= 1, ">= 1"),
            ("auth.max_requests_per_key", self.auth.max_requests_per_key >= 0, ">= 0 (0: no limit)"),
            ("prefill.max_batch_tokens", self.prefill.max_batch_tokens >= 1, ">= 1"),
            ("prefill.max_batch_size", self.prefill.max_batch_size >= 1, ">= 1"),
            ("prefill.max_queued_requests", self.prefill.max_queued_requests >= 1, ">= 1"),
            ("prefill.onednn_cache_entries", self.prefill.onednn_cache_entries >= 1, ">= 1"),
            ("prefill.max_queued_tokens", self.prefill.max_queued_tokens >= self.server.max_context_tokens,
             f">= server.max_context_tokens = {self.server.max_context_tokens} (a full-context prompt must fit)"),
            ("prefill.max_leased_tokens", self.prefill.max_leased_tokens >= self.server.max_context_tokens,
             f">= server.max_context_tokens = {self.server.max_context_tokens} (a full-context prompt must fit)"),
            ("prefill.max_batch_s", self.prefill.max_batch_s > 0, "> 0"),
            ("prefill.unhealthy_batch_s", self.prefill.unhealthy_batch_s >= self.prefill.max_batch_s,
             f">= prefill.max_batch_s = {self.prefill.max_batch_s:g}"),
            ("prefill.max_ticket_wait_s", self.prefill.max_ticket_wait_s >= self.prefill.max_batch_s,
             f">= prefill.max_batch_s = {self.prefill.max_batch_s:g} (a batch must have time to finish)"),
            ("server.max_ongoing_requests", self.server.max_ongoing_requests >= 1, ">= 1"),
            ("server.max_queued_requests", self.server.max_queued_requests >= 1, ">= 1"),
            ("decode.num_slots", self.decode.num_slots >= 1, ">= 1"),
            ("decode.max_waiting", self.decode.max_waiting >= 0, ">= 0"),
            ("decode.max_step_s", self.decode.max_step_s > 0, "> 0"),
            ("decode.slow_step_s", 0 < self.decode.slow_step_s <= self.decode.max_step_s,
             f"in (0, decode.max_step_s = {self.decode.max_step_s:g}]"),
            ("decode.admission_retry_s", self.decode.admission_retry_s >= 0, ">= 0"),
            ("decode.stream_messages_per_s", self.decode.stream_messages_per_s >= 0, ">= 0 (0: one per token)"),
            ("decode.unhealthy_step_s", self.decode.unhealthy_step_s >= self.decode.max_step_s,
             f">= decode.max_step_s = {self.decode.max_step_s:g}"),
        ]
        for pool in ("prefill", "decode", "server"):
            checks.append((f"{pool}.num_replicas", getattr(self, pool).num_replicas >= 1, ">= 1"))
            checks.append((f"{pool}.num_cpus", getattr(self, pool).num_cpus >= 0, ">= 0"))
        for pool in ("prefill", "decode"):
            checks.append((f"{pool}.num_gpus", getattr(self, pool).num_gpus >= 0, ">= 0"))
            checks.append((f"{pool}.num_gpus", self.kv.transport != "nccl" or getattr(self, pool).num_gpus >= 1,
                           ">= 1 with kv.transport nccl (NCCL needs the two replicas of a pair on different GPUs)"))
            accelerator = getattr(self, pool).accelerator_type
            checks.append((f"{pool}.accelerator_type", accelerator is None or (
                re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", accelerator) is not None
                and getattr(self, pool).num_gpus > 0), "a Ray accelerator type name (e.g. H100) with num_gpus > 0"))
            checks.append((f"{pool}.torch_threads", getattr(self, pool).torch_threads >= 0, ">= 0 (0 = num_cpus)"))
            checks.append((f"{pool}.graceful_shutdown_timeout_s", getattr(self, pool).graceful_shutdown_timeout_s >= 0,
                           ">= 0"))
        checks += self._security_checks() + self._tracing_checks()
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{name} = {_get(self, name)!r} is invalid: must be {allowed}")
        return self

    def _security_checks(self) -> list[tuple[str, bool, str]]:
        server, auth, kv = self.server, self.auth, self.kv
        tls = bool(server.tls_cert_file)
        kv_tls = bool(kv.tls_cert_file)
        return [
            ("kv.tls_key_file", bool(kv.tls_key_file) == kv_tls, "set together with kv.tls_cert_file"),
            ("kv.tls_ca_file", bool(kv.tls_ca_file) == kv_tls,
             "set together with kv.tls_cert_file (mutual TLS: the CA that signs every replica's certificate)"),
            ("kv.tls_server_name", not kv.tls_server_name or (kv_tls and re.fullmatch(
                r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
                kv.tls_server_name) is not None),
             "a DNS name from the certificate's SAN, and only with kv.tls_cert_file set"),
            ("kv.transport", not kv_tls or kv.transport != "inprocess",
             "grpc, nccl or gloo with kv.tls_cert_file set (inprocess has no network to encrypt)"),
            ("server.tls_port", 0 < server.tls_port < 65536, "in [1, 65535]"),
            ("server.tls_key_file", bool(server.tls_key_file) == tls, "set together with server.tls_cert_file"),
            ("server.tls_port", not tls or server.tls_port not in (server.grpc_port, server.http_port,
                                                                   server.metrics_port),
             "a port of its own (not grpc_port, http_port or metrics_port)"),
            ("auth.api_keys_env", auth.api_keys_env == "" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*",
                                                                          auth.api_keys_env) is not None,
             "an environment variable name, or empty"),
            ("auth.enabled", not auth.enabled or bool(auth.api_keys_file or auth.api_keys_env),
             "false when neither auth.api_keys_file nor auth.api_keys_env is set"),
        ]

    def _tracing_checks(self) -> list[tuple[str, bool, str]]:
        tracing = self.tracing
        return [
            ("tracing.exporter", tracing.exporter in TRACING_EXPORTERS, f"one of {', '.join(TRACING_EXPORTERS)}"),
            ("tracing.endpoint", tracing.exporter != "otlp" or re.fullmatch(r"https?://[^/\s]+(/\S*)?",
                                                                          tracing.endpoint) is not None,
             "an http:// or https:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces)"),
            ("tracing.file", not (tracing.enabled and tracing.exporter == "file")
             or os.path.isabs(os.path.expanduser(tracing.file)),
             "an absolute path when tracing.exporter is file (every replica appends to it, whatever its working "
             "directory)"),
            ("tracing.sample_ratio", 0.0 <= tracing.sample_ratio <= 1.0, "in [0, 1]"),
            ("tracing.service_name", bool(tracing.service_name.strip()), "a non-empty name"),
        ]

    def with_secret(self) -> ServiceConfig:
        """The KV secret resolved: the configured one, else $OVERFILL_KV_SECRET, else a fresh random one."""
        secret = self.kv.secret or os.environ.get(KV_SECRET_ENV) or secrets.token_hex(16)
        return dataclasses.replace(self, kv=dataclasses.replace(self.kv, secret=secret))


def kv_tls_of(kv: KVConfig):
    """`kv.tls_*` read and checked (overfill.transport.tls.KVTLS), or None when mutual TLS is off. Called where the
    files must be: in each replica that serves or calls a KV service, and by the application's builder, so a path
    that is wrong everywhere fails the deploy with the field named instead of every replica's start."""
    from overfill.transport.tls import KVTLSError, load_kv_tls

    try:
        return load_kv_tls(kv.tls_cert_file, kv.tls_key_file, kv.tls_ca_file, kv.tls_server_name)
    except KVTLSError as e:
        raise ConfigError(str(e)) from None


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


APP_IMPORT_PATH = "services.app:app_builder"
KV_SECRET_ENV = "OVERFILL_KV_SECRET"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ServiceConfig:
    """YAML file (or the defaults) plus `section.field=value` overrides -> a validated ServiceConfig.

    The file is either a ServiceConfig (sections at the top level) or a Ray Serve config file (deploy/*.yaml) whose
    application with import_path `services.app:app_builder` carries the ServiceConfig as its `args`; from the Serve
    file come the gRPC/HTTP ports, the application name and route prefix."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        if "applications" in data:
            data = service_args_of(data, str(path))
    return config_from_dict(data, overrides)


def service_args_of(serve_config: dict, source: str = "config") -> dict:
    """The ServiceConfig sections inside a Ray Serve config file, with the server fields Serve owns filled in."""
    apps = [a for a in serve_config.get("applications") or [] if isinstance(a, dict)
            and a.get("import_path") == APP_IMPORT_PATH]
    if len(apps) != 1:
        raise ConfigError(f"{source}: needs exactly one application with import_path {APP_IMPORT_PATH}, "
                          f"found {len(apps)}")
    app = apps[0]
    data = dict(app.get("args") or {})
    server = dict(data.get("server") or {})
    owned = {"app_name": app.get("name"), "route_prefix": app.get("route_prefix"),
             "grpc_port": (serve_config.get("grpc_options") or {}).get("port"),
             "http_port": (serve_config.get("http_options") or {}).get("port")}
    for name, value in owned.items():
        if name in server:
            raise ConfigError(f"{source}: server.{name} comes from the Ray Serve part of the file; "
                              f"remove it from applications[].args.server")
        if value is not None:
            server[name] = value
    data["server"] = server
    return data


def config_from_dict(data: dict, overrides: list[str] = ()) -> ServiceConfig:
    """Sections as a mapping (a YAML file's, or a Serve application's `args`) plus overrides -> validated config."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {override!r} is not of the form section.field=value")
        section, name = key.split(".", 1)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section} must be a mapping")
        data[section][name] = yaml.safe_load(value)
    return _build(ServiceConfig, data, "").validate()


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown field {prefix}{unknown[0]}; allowed: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value or {}, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, kind, f"{prefix}{name}")
    return cls(**values)


def _coerce(value, kind, name: str):
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None and type(None) in allowed:
        return None
    for target in allowed:
        if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if target is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if target is str and isinstance(value, str):
            return value
        if target is bool and isinstance(value, bool):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{name} must be {names}, got {value!r}")


def decoder_dir(models: ModelsConfig) -> Path:
    """`models.decoder` as a directory. Only `default` (the embedded model's default decoder, built on first use)
    needs overfill.default_decoder, which brings in the pruning and training code: a process given a directory
    (a router, a replica, the Serve application builder) starts without it."""
    if models.decoder == "default":
        from overfill.default_decoder import resolve_decoder

        return resolve_decoder(models.decoder, models.full)
    path = Path(models.decoder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"models.decoder {models.decoder!r} is not a directory (nor 'default')")
    return path


def torch_threads_of(pool: PoolResources) -> int:
    """The model's CPU threads in a replica of `pool`: `torch_threads`, else as many as the CPUs Ray reserves for it
    (at least one). More threads than reserved cores make replicas that share a machine wait on each other: every
    operator ends at a barrier that a preempted thread holds up (measured on 2 cores: `bench service`)."""
    return pool.torch_threads or max(1, round(pool.num_cpus))


def apply_torch_threads(pool: PoolResources) -> None:
    """Ray sets OMP_NUM_THREADS=1 for actors with fractional num_cpus; the replica sets its own count instead."""
    import torch

    torch.set_num_threads(torch_threads_of(pool))
