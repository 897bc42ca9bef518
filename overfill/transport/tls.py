"""Mutual TLS for the internal KV service (`kv.tls_*` in the service config; off when no certificate is set).

Every replica holds the same three PEM files, from one cluster-internal CA: the CA bundle, a certificate signed by it
and that certificate's key. A prefill replica serves its KV service with them and requires a client certificate
signed by the CA (`require_client_auth`); a decode replica or a router presents its certificate when it pulls,
releases or renews, and checks the server's against the CA. So neither side talks to a peer without a certificate
of the cluster's CA, and the KV secret and the KV bytes cross the network encrypted. The secret is still checked:
TLS says "a pod of this cluster", the secret "this service".

Pod IPs change and are rarely in a certificate, so a cluster's certificate names one fixed DNS name in its SAN
(`kv.tls_server_name`, e.g. `overfill-kv`) and clients check the server's certificate against that name instead of
the address they dial (`grpc.ssl_target_name_override`). With no name set, the dialled host is checked (a
certificate for 127.0.0.1 on one machine).

What this does not cover: with `kv.transport` gloo or nccl only the metadata calls (OpenGroup, Send, Release, Renew)
go over TLS; the TCPStore rendezvous and the KV bytes on the process group are not encrypted (pair_group.py: the
pair's HMAC handshake keeps a peer without the secret from receiving KV, not a sniffer from reading it).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


class KVTLSError(ValueError):
    """A TLS file is missing, unreadable or not what its field says; the message names the field."""


@dataclass(frozen=True)
class KVTLS:
    """The PEM bytes one replica needs, for both roles (its KV service, and its calls to others')."""

    cert_chain: bytes         # this replica's certificate (then any intermediates), signed by the CA
    private_key: bytes        # the certificate's key
    root_certificates: bytes  # the CA bundle peers' certificates must chain to
    server_name: str = ""     # the name a server's certificate must carry; "": the dialled host

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)],
                                           root_certificates=self.root_certificates, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates, private_key=self.private_key,
                                            certificate_chain=self.cert_chain)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def secure_channel(address: str, tls: KVTLS | None, options: list) -> grpc.Channel:
    """A channel to a KV service: mutual TLS when `tls` is set, plaintext otherwise."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials(), options=[*options, *tls.channel_options()])


def _read_pem(path: str, field: str, marker: bytes, what: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise KVTLSError(f"{field} = {path!r} cannot be read: {e.strerror or e}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise KVTLSError(f"{field} = {path!r} is not a PEM {what}")
    return data


def load_kv_tls(cert_file: str, key_file: str, ca_file: str, server_name: str = "",
                prefix: str = "kv.tls_") -> KVTLS | None:
    """The files read and checked (None when none is set): each one readable and PEM of its kind, the key the
    certificate's (the standard library's TLS loader does the check: gRPC would only fail at the first handshake),
    the CA bundle loadable. Errors name the field (`prefix` + cert_file, ...)."""
    names = {"cert_file": cert_file, "key_file": key_file, "ca_file": ca_file}
    if not any(names.values()):
        return None
    for name, value in names.items():
        if not value:
            others = ", ".join(f"{prefix}{other}" for other in names if other != name)
            raise KVTLSError(f"{prefix}{name} is empty: mutual TLS needs it together with {others}")
    cert = _read_pem(cert_file, f"{prefix}cert_file", b"CERTIFICATE-----", "certificate")
    key = _read_pem(key_file, f"{prefix}key_file", b"PRIVATE KEY-----", "private key")
    ca = _read_pem(ca_file, f"{prefix}ca_file", b"CERTIFICATE-----", "CA certificate bundle")
    encrypted = KVTLSError(f"{prefix}key_file = {key_file!r} is encrypted: gRPC takes only an unencrypted key (keep it "
                           "readable by the service alone instead)")
    if b"ENCRYPTED" in key:
        raise encrypted

    def no_passphrase():  # never OpenSSL's prompt on the terminal, which would hang a replica
        raise encrypted

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(Path(cert_file).expanduser()), str(Path(key_file).expanduser()), no_passphrase)
    except ssl.SSLError as e:
        raise KVTLSError(f"{prefix}key_file = {key_file!r} is not the key of {prefix}cert_file = {cert_file!r} "
                         f"({e.reason or e})") from None
    try:
        context.load_verify_locations(cadata=ca.decode("ascii", errors="replace"))
    except ssl.SSLError as e:
        raise KVTLSError(f"{prefix}ca_file = {ca_file!r} holds no usable CA certificate ({e.reason or e})") from None
    return KVTLS(cert, key, ca, server_name)
