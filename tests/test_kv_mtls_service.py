"""The service end to end with the KV service on mutual TLS (`kv.tls_*`): prefill replicas serve their KV over mTLS,
decode replicas pull and the router releases over it with the cluster's certificate, checked against
`kv.tls_server_name` (the replicas dial 127.0.0.1, which the certificate does not name). Greedy output equals the
in-process engine, a request that ends at its first token has its lease released by the router, and no KV is left."""

import pytest

from overfill.client import OverFillClient
from overfill.serving.config import kv_tls_of
from overfill.transport.base import KVTransferError
from overfill.transport.grpc_backend import GrpcKVReceiver
from tests.service_helpers import assert_no_kv_left, in_process, pool_stats, tiny_service
from tests.test_kv_mtls import SERVER_NAME, write_ca_and_certificate

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def service(service_models, tmp_path_factory):
    pems = write_ca_and_certificate(tmp_path_factory.mktemp("kv-mtls-service"), "cluster", [SERVER_NAME])
    with tiny_service(service_models, f"kv.tls_cert_file={pems.cert}", f"kv.tls_key_file={pems.key}",
                      f"kv.tls_ca_file={pems.ca}", f"kv.tls_server_name={SERVER_NAME}") as service:
        yield service


def test_greedy_over_a_mutual_tls_kv_service_equals_in_process_and_leaves_no_kv(service):
    with OverFillClient(service["address"], timeout_s=120) as client:
        for prompt in ["What is the capital of France?", "one two three"]:
            token_ids = [t for piece in client.generate(prompt, max_tokens=12) for t in piece.token_ids]
            assert token_ids == in_process(service, prompt, 12)
        # Finished at its first token: decode never pulls, the router releases the lease over mTLS.
        assert len(client.generate_unary("one two three", max_tokens=1).token_ids) == 1
    assert_no_kv_left(service["config"], timeout_s=5.0)  # well inside the 30 s lease: released, not expired
    assert pool_stats(service["config"], "prefill")["leases_expired"] == 0



def test_the_prefill_replicas_kv_service_takes_no_plaintext_caller(service):
    """A lease taken as the router takes one (the prefill pool's handle): a plaintext caller with the secret gets
    UNAVAILABLE and frees nothing; a caller with the cluster's certificate releases it."""
    from ray import serve

    from overfill.engine.sampling_params import SamplingParams
    from overfill.serving.types import PrefillRequest

    config = service["config"]
    prefill = serve.get_deployment_handle("prefill", config.server.app_name)
    result = prefill.prefill.remote(PrefillRequest("mtls-lease", [5, 6, 7, 8], SamplingParams(max_new_tokens=8)))
    ticket = result.result().ticket
    plaintext, cluster = GrpcKVReceiver(secret=config.kv.secret), GrpcKVReceiver(config.kv.secret, kv_tls_of(config.kv))
    try:
        with pytest.raises(KVTransferError) as error:
            plaintext.pull(ticket, ticket.layout)
        assert error.value.code == "UNAVAILABLE" and pool_stats(config, "prefill")["num_leases"] == 1
        assert cluster.release(ticket) is True
    finally:
        plaintext.close()
        cluster.close()
    assert_no_kv_left(config, timeout_s=5.0)
