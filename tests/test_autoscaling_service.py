"""The decode pool autoscales on KV demand on a local Ray cluster with tiny models, deployed from deploy/local.yaml
(its policy, with the delays shortened): it scales up while the load lasts and back down after it."""

import asyncio
import threading

import pytest

from overfill.client import AsyncOverFillClient, OverFillClient
from services.app import read_serve_file
from tests.service_helpers import assert_no_kv_left, tiny_service, wait_for

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def service(service_models):
    serve_file = read_serve_file("deploy/local.yaml")
    (app,) = serve_file["applications"]
    (decode,) = app["deployments"]
    # Replicas report their KV demand every second; a 2 s look-back holds two reports.
    decode["autoscaling_config"].update(upscale_delay_s=0, downscale_delay_s=2, look_back_period_s=2,
                                        metrics_interval_s=1)
    with tiny_service(service_models, "decode.num_slots=2", "decode.max_waiting=64", "server.max_tokens_limit=128",
                      serve_file=serve_file) as service:
        yield service["config"]


def replicas(config) -> dict[str, int]:
    with OverFillClient(f"127.0.0.1:{config.server.grpc_port}") as client:
        return dict(client.health_report().replicas)


def test_decode_pool_scales_up_under_load_and_back_down(service):
    address = f"127.0.0.1:{service.server.grpc_port}"
    stop, finished, failures = threading.Event(), [], []

    async def load():
        async with AsyncOverFillClient(address, timeout_s=120) as client:
            async def one(i):
                while not stop.is_set():
                    try:
                        pieces = [p async for p in client.generate(f"load {i}", max_tokens=120)]
                        finished.append(pieces[-1].finish_reason)
                    except Exception as e:  # noqa: BLE001  counted, asserted below
                        failures.append(e)
            await asyncio.gather(*(one(i) for i in range(12)))  # 12 streams on 2 slots: KV demand 6

    # Health's replica counts are at most 5 s old: the first may predate the replicas turning RUNNING.
    assert wait_for(lambda: replicas(service)["decode"] == 1, timeout_s=10), replicas(service)
    driver = threading.Thread(target=lambda: asyncio.run(load()))
    driver.start()
    try:
        assert wait_for(lambda: replicas(service)["decode"] == 2, timeout_s=60), replicas(service)
    finally:
        stop.set()
        driver.join(timeout=120)
    assert not failures and finished
    assert wait_for(lambda: replicas(service)["decode"] == 1, timeout_s=60), replicas(service)
    assert_no_kv_left(service)
