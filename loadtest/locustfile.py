"""Locust user for the OverFill Serve gRPC API: each task streams one Generate call and records two entries,
"Generate TTFT" and "Generate E2E" (request_type "grpc"), so Locust's tables and charts show both latencies.

    pip install 'overfill[loadtest]'            # locust is an optional extra
    locust -f loadtest/locustfile.py --host 127.0.0.1:9000 --headless -u 8 -r 2 -t 60s

Environment: OVERFILL_API_KEY (sent as `authorization: Bearer KEY`), OVERFILL_TLS_CA (PEM root certificate: use
TLS), LOCUST_PROMPT_WORDS (prompt length in words, default 64), LOCUST_MAX_TOKENS (default 64),
LOCUST_TIMEOUT_S (per-request deadline, default 120). The timing lives in `loadtest.stream_timing`.
"""

# gRPC must use gevent (Locust's concurrency) instead of its own threads: patch it before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import os  # noqa: E402
import random  # noqa: E402

import grpc  # noqa: E402
from locust import User, constant, task  # noqa: E402

from loadtest.datasets import WORDS  # noqa: E402
from loadtest.stream_timing import time_stream  # noqa: E402
from overfill.client import make_request  # noqa: E402
from overfill.v1 import generation_pb2_grpc as pb_grpc  # noqa: E402


class GenerateUser(User):
    wait_time = constant(0)
    host = "127.0.0.1:9000"

    def on_start(self) -> None:
        ca = os.environ.get("OVERFILL_TLS_CA")
        if ca:
            with open(ca, "rb") as f:
                self.channel = grpc.secure_channel(self.host, grpc.ssl_channel_credentials(root_certificates=f.read()))
        else:
            self.channel = grpc.insecure_channel(self.host)
        self.stub = pb_grpc.GenerationStub(self.channel)
        key = os.environ.get("OVERFILL_API_KEY")
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self.num_words = int(os.environ.get("LOCUST_PROMPT_WORDS", "64"))
        self.max_tokens = int(os.environ.get("LOCUST_MAX_TOKENS", "64"))
        self.timeout_s = float(os.environ.get("LOCUST_TIMEOUT_S", "120"))

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def generate(self) -> None:
        prompt = " ".join(random.choices(WORDS, k=self.num_words))
        request = make_request(prompt=prompt, max_tokens=self.max_tokens)
        timing = time_stream(lambda: self.stub.Generate(request, metadata=self.metadata, timeout=self.timeout_s))
        for event in timing.events():
            self.environment.events.request.fire(**event)
