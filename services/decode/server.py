"""Decode pool replica (Ray Serve deployment): the pruned decoder and continuous batching on pulled KV.

Thin adapter over `overfill.serving.decode_worker.DecodeWorker`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from overfill.decoder_checkpoint import load_decoder
from overfill.engine.runner import ModelRunner
from overfill.prompts import eos_token_ids
from overfill.serving.config import ServiceConfig, apply_torch_threads, decoder_dir, kv_tls_of
from overfill.serving.decode_worker import DecodeSettings, DecodeWorker
from overfill.serving.tracing import process_tracing
from overfill.serving.types import AdmissionRefused, PrefillResult, TokenChunk
from overfill.engine.sampling import SamplingParams
from overfill.transport.base import make_receiver
from services.autoscaling import DECODE_METRIC
from services.metrics import DecodeMetrics, served_model_name
from services.prefill.server import kv_host


class DecodeServer:
    def __init__(self, config: ServiceConfig):
        from transformers import AutoTokenizer

        self.tracing = process_tracing(config.tracing, "decode")  # first: an exporter it cannot build fails at once
        apply_torch_threads(config.decode)
        directory = decoder_dir(config.models)
        decoder = load_decoder(directory, dtype=config.models.dtype, device=config.models.device)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        self.metrics = DecodeMetrics(served_model_name(config))
        self.replica_id = own_replica_id()
        self.receiver = make_receiver(config.kv.transport, secret=config.kv.secret, device=config.models.device,
                                      bind_host=kv_host(config), transfer_timeout_s=config.kv.transfer_timeout_s,
                                      tls=kv_tls_of(config.kv))
        self.worker = DecodeWorker(
            ModelRunner(decoder), self.receiver, eos_token_ids(decoder.config, decoder.generation_config, tokenizer),
            DecodeSettings(num_slots=config.decode.num_slots, max_seq_len=config.server.max_context_tokens,
                           max_waiting=config.decode.max_waiting, slow_step_s=config.decode.slow_step_s,
                           max_step_s=config.decode.max_step_s,
                           unhealthy_step_s=config.decode.unhealthy_step_s,
                           kv_pull_timeout_s=config.kv.transfer_timeout_s,
                           cuda_graphs=config.decode.cuda_graphs,
                           stream_messages_per_s=config.decode.stream_messages_per_s),
            self.tracing,
        )

    async def generate(self, prefill: PrefillResult, sampling: SamplingParams,
                       avoid_replicas: tuple[str, ...] = ()) -> AsyncIterator[TokenChunk]:
        """Called by the router as a stream; cancelling it frees the sequence's KV slot. `avoid_replicas`: the
        decode replicas that refused this request already; the decode request router ranked them last, so if this
        replica is one of them, no other was left and it is the pool's last choice. A refusal names this replica."""
        try:
            async for chunk in self.worker.generate(prefill, sampling, last_choice=self.replica_id in avoid_replicas):
                if chunk.kv_transfer_s is not None:
                    self.metrics.transferred(chunk.kv_transfer_s, prefill.ticket.layout.total_bytes)
                yield chunk
        except AdmissionRefused as refusal:
            refusal.replica_id = self.replica_id
            raise

    async def check_health(self) -> None:
        """Called by Ray Serve every health_check_period_s: raising marks this replica unhealthy and Serve replaces
        it. Fails while one decode step holds the model thread past decode.unhealthy_step_s."""
        self.worker.check_health()

    async def stats(self) -> dict:
        return {**self.worker.stats(), **self.receiver.stats()}

    def record_routing_stats(self) -> dict:
        """Polled by Ray every 0.5 s: feeds the decode request router (most free KV among replicas that can admit,
        a replica held by a step last) and the metrics."""
        stats = self.worker.stats()
        self.metrics.refresh(stats)
        return stats

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Polled by Ray Serve for autoscaling (services/autoscaling.py): sequences running or waiting per slot."""
        stats = self.worker.stats()
        return {DECODE_METRIC: (stats["num_running"] + stats["num_waiting"]) / self.worker.settings.num_slots}

    def __del__(self):
        self.worker.close()
        self.receiver.close()
        if self.tracing is not None:
            self.tracing.flush()


def own_replica_id() -> str:
    """This replica's Ray Serve id (what the decode request router sees as `replica_id.unique_id`); "" outside
    Serve."""
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001  not running as a Serve replica (tests build the server directly)
        return ""
