"""Prefill pool replica (Ray Serve deployment): the full model, prompt batching, first token, KV leases.

Thin adapter: the work is `overfill.serving.prefill_worker.PrefillWorker`; the KV service (where decode replicas pull
leased KV) runs inside this replica on the cluster-internal address from the config.
"""

from __future__ import annotations

import logging
import time

from overfill.decoder_checkpoint import check_decoder_fits
from overfill.engine.linear import bound_onednn_caches
from overfill.engine.runner import ModelRunner
from overfill.model_loading import load_model
from overfill.prompts import eos_token_ids
from overfill.serving.config import ServiceConfig, apply_torch_threads, decoder_dir, kv_tls_of
from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
from overfill.serving.tracing import process_tracing
from overfill.serving.types import PrefillRequest, PrefillResult
from overfill.transport.base import make_sender
from services.autoscaling import PREFILL_METRIC
from services.metrics import PrefillMetrics, served_model_name

log = logging.getLogger(__name__)


def kv_host(config: ServiceConfig) -> str:
    """The address the KV service listens on: `kv.bind_host`, where `node-ip` means this node's cluster IP (the pod
    IP on Kubernetes), for clusters whose decode replicas run on other nodes."""
    if config.kv.bind_host == "node-ip":
        import ray

        return ray.util.get_node_ip_address()
    return config.kv.bind_host


class PrefillServer:
    def __init__(self, config: ServiceConfig):
        self.tracing = process_tracing(config.tracing, "prefill")  # first: an exporter it cannot build fails at once
        apply_torch_threads(config.prefill)
        bound_onednn_caches(config.prefill.onednn_cache_entries)  # before the first oneDNN op: see its NOTE
        full = load_model(config.models.full, dtype=config.models.dtype, device=config.models.device)
        # The driver checked the configs; only here are the full model's weights loaded to check them against the
        # fingerprint the decoder recorded (a fine-tune of the same architecture must not serve another's decoder).
        check_decoder_fits(decoder_dir(config.models), full.model.config, full.model)
        self.sender = make_sender(config.kv.transport, secret=config.kv.secret, bind_address=f"{kv_host(config)}:0",
                                  lease_ttl_s=config.kv.lease_ttl_s, chunk_bytes=config.kv.chunk_bytes,
                                  device=config.models.device, transfer_timeout_s=config.kv.transfer_timeout_s,
                                  tls=kv_tls_of(config.kv))
        self.metrics = PrefillMetrics(served_model_name(config))
        self.worker = PrefillWorker(
            ModelRunner(full.model), self.sender, eos_token_ids(full.model.config, full.model.generation_config,
                                                                full.tokenizer),
            PrefillSettings(max_seq_len=config.server.max_context_tokens,
                            max_batch_tokens=config.prefill.max_batch_tokens,
                            max_batch_size=config.prefill.max_batch_size,
                            max_queued_requests=config.prefill.max_queued_requests,
                            max_queued_tokens=config.prefill.max_queued_tokens,
                            max_leased_tokens=config.prefill.max_leased_tokens,
                            max_batch_s=config.prefill.max_batch_s,
                            unhealthy_batch_s=config.prefill.unhealthy_batch_s),
            self.tracing,
        )

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        """Called by the router; returns the ticket (never KV bytes)."""
        return await self.worker.prefill(request)

    async def check_health(self) -> None:
        """Called by Ray Serve every health_check_period_s: raising marks this replica unhealthy and Serve replaces
        it. Fails while one prefill batch holds the model thread past prefill.unhealthy_batch_s."""
        self.worker.check_health()

    async def stats(self) -> dict:
        return {**self.worker.stats(), "leases_expired": getattr(getattr(self.sender, "leases", None), "num_expired", 0)}

    async def record_routing_stats(self) -> dict:
        """Polled by Ray every 0.5 s: feeds the prefill request router (least queued prompt tokens) and the
        metrics."""
        stats = await self.stats()
        self.metrics.refresh(stats)
        return stats

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Polled by Ray Serve for autoscaling (services/autoscaling.py): prompt tokens waiting for a batch."""
        return {PREFILL_METRIC: float(self.worker.stats()["queued_prompt_tokens"])}

    def __del__(self):
        """Ray Serve calls this when it stops the replica (upgrade, scale-in), once the replica's in-flight calls
        drained. Tickets already handed out still point here: serve their KV until decode has pulled every lease
        (each expires within kv.lease_ttl_s anyway) or graceful_shutdown_timeout_s runs out and Serve kills the
        replica. Blocking is fine: the KV service answers pulls and releases on its own threads."""
        if not hasattr(self, "worker"):  # __init__ refused the models: nothing was started
            return
        deadline = time.monotonic() + self.sender.leases.ttl_s
        while self.sender.num_leases and time.monotonic() < deadline:
            time.sleep(0.05)
        self.worker.close()
        self.sender.close()
        if self.tracing is not None:
            self.tracing.flush()
