"""Mutual TLS for the internal KV service (overfill/transport/tls.py), with a throwaway CA made here: KV pulled over
mTLS equals the plaintext pull bit for bit; a client without a certificate, with one from another CA, or speaking
plaintext is refused in the handshake, at once, and nothing it touched is left behind; the secret is still checked;
the config refuses incomplete or wrong files with the field named."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import time
from pathlib import Path

import grpc
import pytest
import torch

from overfill.serving.config import ConfigError, config_from_dict, kv_tls_of
from overfill.transport.base import KVTransferError, make_receiver, make_sender
from overfill.transport.grpc_backend import SECRET_METADATA_KEY, GrpcKVReceiver
from overfill.transport.tls import KVTLS, load_kv_tls
from overfill.transport.wire import KVLayout
from overfill.v1 import kv_transfer_pb2 as pb
from overfill.v1 import kv_transfer_pb2_grpc as pb_grpc
from tests.test_kv_transport import random_kv

SECRET = "mtls-secret"
SERVER_NAME = "overfill-kv"  # the one SAN of the cluster's certificate, as on KubeRay: pod IPs are in no certificate
REFUSED_WITHIN_S = 5.0       # a refused handshake fails the call at once, never at its deadline


@dataclasses.dataclass
class Pems:
    cert: Path
    key: Path
    ca: Path


def write_ca_and_certificate(root: Path, tag: str, dns_names: list[str], ips: list[str] = ()) -> Pems:
    """A CA, and a certificate it signs for both TLS roles (every replica serves and calls with the same one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{tag} cluster CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
          .not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, tag)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    root.mkdir(parents=True, exist_ok=True)
    pems = Pems(root / "tls.crt", root / "tls.key", root / "ca.crt")
    pems.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pems.key.write_bytes(pem_key(key))
    pems.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return pems


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Pems]:
    root = tmp_path_factory.mktemp("kv-mtls")
    return {"cluster": write_ca_and_certificate(root / "cluster", "cluster", [SERVER_NAME]),
            "other": write_ca_and_certificate(root / "other", "other", [SERVER_NAME])}


def tls_of(pems: Pems, server_name: str = SERVER_NAME) -> KVTLS:
    return load_kv_tls(str(pems.cert), str(pems.key), str(pems.ca), server_name)


@pytest.fixture
def mtls_sender(certs):
    sender = make_sender("grpc", secret=SECRET, chunk_bytes=64 << 10, tls=tls_of(certs["cluster"]))
    yield sender
    sender.close()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def refused_at_once(call) -> KVTransferError:
    start = time.monotonic()
    with pytest.raises(KVTransferError) as error:
        call()
    assert time.monotonic() - start < REFUSED_WITHIN_S
    return error.value


def test_kv_pulled_over_mutual_tls_equals_the_plaintext_pull(certs, mtls_sender):
    k, v = random_kv(torch.bfloat16, layers=4, heads=3, tokens=700, head_dim=64)  # several 64 KiB chunks
    plain_sender = make_sender("grpc", secret=SECRET, chunk_bytes=64 << 10)
    plain_receiver = make_receiver("grpc", secret=SECRET)
    receiver = make_receiver("grpc", secret=SECRET, tls=tls_of(certs["cluster"]))
    try:
        expected = dataclasses.replace(KVLayout.of(k), num_tokens=0)
        plain = plain_receiver.pull(plain_sender.publish("req", k, v), expected)
        ticket = mtls_sender.publish("req", k, v)
        assert ticket.address.startswith("127.0.0.1:")  # dialled by IP; checked against the certificate's name
        over_tls = receiver.pull(ticket, expected)
        assert all(same_bits(a, b) for a, b in zip(over_tls, plain)) and same_bits(over_tls[0], k)
        renewal = receiver.renew(ticket.address, ["req"])
        assert renewal.not_found == frozenset() and renewal.ttl_s > 0
        assert receiver.release(ticket) is True and mtls_sender.num_leases == 0
    finally:
        for end in (receiver, plain_receiver, plain_sender):
            end.close()


def test_the_secret_is_still_checked_over_mutual_tls(certs, mtls_sender):
    k, v = random_kv()
    ticket = mtls_sender.publish("req", k, v)
    intruder = make_receiver("grpc", secret="wrong", tls=tls_of(certs["cluster"]))
    try:
        error = refused_at_once(lambda: intruder.release(ticket))
        assert error.code == "UNAUTHENTICATED" and mtls_sender.num_leases == 1
    finally:
        intruder.close()
    assert mtls_sender.release("req") and mtls_sender.num_leases == 0


def _raw_release(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        pb_grpc.KVTransferStub(channel).Release(pb.ReleaseRequest(request_id="req"),
                                                metadata=((SECRET_METADATA_KEY, SECRET),), timeout=30.0)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_a_client_without_a_certificate_is_refused_in_the_handshake(certs, mtls_sender):
    """It trusts the right CA and knows the secret: without a certificate of its own it reaches nothing."""
    k, v = random_kv()
    mtls_sender.publish("req", k, v)
    credentials = grpc.ssl_channel_credentials(root_certificates=certs["cluster"].ca.read_bytes())
    with grpc.secure_channel(mtls_sender.address, credentials,
                             options=[("grpc.ssl_target_name_override", SERVER_NAME)]) as channel:
        start = time.monotonic()
        assert _raw_release(channel) == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - start < REFUSED_WITHIN_S
    assert mtls_sender.num_leases == 1  # its Release never reached the service
    assert mtls_sender.release("req")


def test_a_client_with_a_certificate_of_another_ca_is_refused(certs, mtls_sender):
    k, v = random_kv()
    ticket = mtls_sender.publish("req", k, v)
    other = certs["other"]
    # Its own certificate from another CA, whichever CA it trusts: the server refuses the certificate.
    for trusted_ca in (certs["cluster"].ca, other.ca):
        tls = load_kv_tls(str(other.cert), str(other.key), str(trusted_ca), SERVER_NAME)
        stranger = make_receiver("grpc", secret=SECRET, tls=tls)
        try:
            error = refused_at_once(lambda: stranger.pull(ticket, KVLayout.of(k)))
            assert error.code == "UNAVAILABLE"
            assert stranger.channels.addresses == []  # the refused channel is dropped, not kept for the next call
        finally:
            stranger.close()
    assert mtls_sender.num_leases == 1  # the refused pulls took nothing
    assert mtls_sender.release("req")


def test_a_server_with_a_certificate_of_another_ca_or_name_is_refused_by_the_client(certs):
    """The other direction: a decode replica sends its secret to no KV service it cannot verify."""
    k, v = random_kv()
    receiver = make_receiver("grpc", secret=SECRET, tls=tls_of(certs["cluster"]))
    wrong_name = make_receiver("grpc", secret=SECRET, tls=tls_of(certs["cluster"], server_name="someone-else"))
    impostor = make_sender("grpc", secret=SECRET, tls=tls_of(certs["other"]))
    genuine = make_sender("grpc", secret=SECRET, tls=tls_of(certs["cluster"]))
    try:
        error = refused_at_once(lambda: receiver.pull(impostor.publish("req", k, v), KVLayout.of(k)))
        assert error.code == "UNAVAILABLE" and impostor.num_leases == 1
        error = refused_at_once(lambda: wrong_name.pull(genuine.publish("req", k, v), KVLayout.of(k)))
        assert error.code == "UNAVAILABLE" and genuine.num_leases == 1
    finally:
        for end in (receiver, wrong_name, impostor, genuine):
            end.close()


def test_a_plaintext_client_to_a_tls_service_fails_cleanly_and_leaks_nothing(certs, mtls_sender):
    """An error at once (no wait for the deadline), the channel dropped, and the lease untouched: the router (a TLS
    client) still frees it, and nothing is left."""
    k, v = random_kv()
    ticket = mtls_sender.publish("req", k, v)
    plaintext = GrpcKVReceiver(secret=SECRET)
    try:
        error = refused_at_once(lambda: plaintext.pull(ticket, KVLayout.of(k), timeout_s=30.0))
        assert error.code == "UNAVAILABLE" and plaintext.channels.addresses == []
        error = refused_at_once(lambda: plaintext.release(ticket))
        assert error.code == "UNAVAILABLE" and mtls_sender.num_leases == 1
    finally:
        plaintext.close()
    releaser = GrpcKVReceiver(secret=SECRET, tls=tls_of(certs["cluster"]))
    try:
        assert releaser.release(ticket) is True and mtls_sender.num_leases == 0
    finally:
        releaser.close()


def test_a_tls_client_to_a_plaintext_service_fails_cleanly(certs):
    k, v = random_kv()
    plain = make_sender("grpc", secret=SECRET)
    receiver = make_receiver("grpc", secret=SECRET, tls=tls_of(certs["cluster"]))
    try:
        error = refused_at_once(lambda: receiver.pull(plain.publish("req", k, v), KVLayout.of(k)))
        assert error.code == "UNAVAILABLE" and plain.num_leases == 1
    finally:
        receiver.close()
        plain.close()


def test_gloo_pairs_open_and_send_over_mutual_tls(certs):
    """nccl/gloo: the metadata calls (OpenGroup, Send, Release) go over mutual TLS; the bytes over the group."""
    tls = tls_of(certs["cluster"])
    sender = make_sender("gloo", secret=SECRET, transfer_timeout_s=10.0, tls=tls)
    receiver = make_receiver("gloo", secret=SECRET, transfer_timeout_s=10.0, tls=tls)
    plaintext = make_receiver("gloo", secret=SECRET, transfer_timeout_s=10.0)
    try:
        k, v = random_kv(torch.float32, layers=2, heads=2, tokens=40, head_dim=8)
        ticket = sender.publish("req", k, v)
        error = refused_at_once(lambda: plaintext.pull(ticket, KVLayout.of(k)))
        assert error.code == "UNAVAILABLE" and sender.num_pairs == 0  # no group was opened for it
        k2, v2 = receiver.pull(ticket, dataclasses.replace(KVLayout.of(k), num_tokens=0))
        assert same_bits(k2, k) and same_bits(v2, v)
        assert receiver.release(ticket) is True and sender.num_leases == 0
    finally:
        for end in (plaintext, receiver, sender):
            end.close()


# ---- configuration ---------------------------------------------------------------------------------------------------


def kv_args(pems: Pems | None = None, **fields) -> dict:
    kv = {"transport": "grpc"}
    if pems is not None:
        kv.update(tls_cert_file=str(pems.cert), tls_key_file=str(pems.key), tls_ca_file=str(pems.ca))
    kv.update(fields)
    return {"kv": kv}


def test_the_config_turns_mutual_tls_on_with_all_three_files(certs):
    config = config_from_dict(kv_args(certs["cluster"], tls_server_name=SERVER_NAME))
    tls = kv_tls_of(config.kv)
    assert isinstance(tls, KVTLS) and tls.server_name == SERVER_NAME
    assert tls.channel_options() == [("grpc.ssl_target_name_override", SERVER_NAME)]
    assert kv_tls_of(config_from_dict({}).kv) is None  # off by default: plaintext, as before


@pytest.mark.parametrize("fields, message", [
    ({"tls_key_file": "/k.pem"}, "kv.tls_key_file = '/k.pem' is invalid: must be set together with kv.tls_cert_file"),
    ({"tls_cert_file": "/c.pem", "tls_key_file": "/k.pem"}, "kv.tls_ca_file = '' is invalid: must be set together"),
    ({"tls_ca_file": "/ca.pem"}, "kv.tls_ca_file = '/ca.pem' is invalid"),
    ({"tls_server_name": "overfill-kv"}, "kv.tls_server_name = 'overfill-kv' is invalid: must be a DNS name from the "
                                         "certificate's SAN, and only with kv.tls_cert_file set"),
    ({"tls_cert_file": "/c", "tls_key_file": "/k", "tls_ca_file": "/a", "tls_server_name": "not a name"},
     "kv.tls_server_name = 'not a name' is invalid"),
    ({"tls_cert_file": "/c", "tls_key_file": "/k", "tls_ca_file": "/a", "transport": "inprocess"},
     "kv.transport = 'inprocess' is invalid: must be grpc, nccl or gloo with kv.tls_cert_file set"),
])
def test_incomplete_tls_settings_are_refused_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(kv_args(**fields))


def test_tls_files_that_cannot_serve_are_refused_naming_the_field(certs, tmp_path):
    cluster, other = certs["cluster"], certs["other"]
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("a certificate, honest\n")
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(cluster.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"  # OpenSSL would prompt for its passphrase on the terminal: never here
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    cases = [
        ({"tls_cert_file": str(tmp_path / "missing.crt")}, "kv.tls_cert_file = '.*missing.crt' cannot be read"),
        ({"tls_key_file": str(not_pem)}, "kv.tls_key_file = '.*notes.txt' is not a PEM private key"),
        ({"tls_key_file": str(cluster.cert)}, "kv.tls_key_file = .* is not a PEM private key"),
        ({"tls_ca_file": str(cluster.key)}, "kv.tls_ca_file = .* is not a PEM CA certificate bundle"),
        ({"tls_key_file": str(other.key)}, "kv.tls_key_file = .* is not the key of kv.tls_cert_file"),
        ({"tls_key_file": str(encrypted)}, "kv.tls_key_file = .*encrypted.key' is encrypted"),
    ]
    for fields, message in cases:
        config = config_from_dict(kv_args(cluster, **fields))  # the config's shape is right: only the files fail
        with pytest.raises(ConfigError, match=message):
            kv_tls_of(config.kv)
