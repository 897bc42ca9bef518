"""API keys for the public APIs (gRPC, and the OpenAI-compatible HTTP API): where they come from, and the
constant-time check of a request's key.

A client sends `authorization: Bearer <key>` as gRPC metadata or as an HTTP header. The accepted keys come from
`auth.api_keys_file` (one key per line; blank lines and lines starting with `#` are ignored) and/or the environment
variable named by `auth.api_keys_env` (keys separated by commas). They are read where they are checked (the router
replica), so a deployment hands them over the way it hands over any secret: a mounted file or an environment
variable, never the config itself.

The check hashes the sent key and compares it with every accepted key's hash with `hmac.compare_digest`, without
stopping at the first match: the time taken says nothing about which key, or how much of one, was right. Refusals
never echo what was sent.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from overfill.serving.config import AuthConfig, ConfigError

AUTH_METADATA_KEY = "authorization"
BEARER = "bearer"
MIN_KEY_CHARS = 16
KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: what gRPC metadata values may carry
AUTH_OFF_WARNING = ("auth.enabled is false: the gRPC and HTTP APIs serve anyone who can reach their ports, without an "
                    "API key. Set auth.enabled=true with auth.api_keys_file or $OVERFILL_API_KEYS beyond a trusted "
                    "machine.")

# Why a request was refused -> what the client is told (and the `reason` tag of the rejection metric).
REFUSALS = {
    "missing": "missing API key: send `authorization: Bearer <key>` (gRPC metadata, or the HTTP header)",
    "malformed": "malformed authorization metadata: expected `Bearer <key>`",
    "invalid": "invalid API key",
}


def _check_key(key: str, where: str) -> str:
    """One key from `where` (names the field and line, never the key) -> the key, or ConfigError."""
    if not KEY_CHARS.fullmatch(key):
        raise ConfigError(f"{where}: an API key must be printable ASCII without spaces")
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"{where}: an API key must have at least {MIN_KEY_CHARS} characters, this one has "
                          f"{len(key)} (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return key


def load_api_keys(auth: AuthConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """The accepted keys from `auth.api_keys_file` and `$<auth.api_keys_env>`, in that order, duplicates dropped.

    Raises ConfigError naming the field when the file is missing or unreadable, a key is malformed, or auth is
    enabled and no key is found at all."""
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if auth.api_keys_file:
        path = Path(auth.api_keys_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"auth.api_keys_file = {str(path)!r} cannot be read: {e.strerror or e}") from e
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(_check_key(line, f"auth.api_keys_file {path}:{number}"))
    if auth.api_keys_env:
        for index, key in enumerate(k.strip() for k in environ.get(auth.api_keys_env, "").split(",")):
            if key:
                keys.append(_check_key(key, f"${auth.api_keys_env} (auth.api_keys_env), key {index + 1}"))
    if auth.enabled and not keys:
        sources = [f"auth.api_keys_file = {auth.api_keys_file!r}" if auth.api_keys_file else None,
                   f"${auth.api_keys_env} (auth.api_keys_env)" if auth.api_keys_env else None]
        raise ConfigError(f"auth.enabled is true but no API key was found in "
                          f"{' or '.join(s for s in sources if s)}; add keys there, or set auth.enabled=false "
                          f"for a service only this machine can reach")
    return list(dict.fromkeys(keys))


class KeyCheck(NamedTuple):
    refusal: str | None     # why the key is refused (a key of REFUSALS), or None: accepted
    key_id: bytes | None    # the accepted key's SHA-256 digest: who the caller is, for per-key limits


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeyChecker:
    """The accepted keys, held as SHA-256 digests, and the check of one request's metadata against all of them."""

    def __init__(self, keys: Iterable[str]):
        self._digests = [_digest(k) for k in keys]
        if not self._digests:
            raise ValueError("ApiKeyChecker needs at least one key")

    def __len__(self) -> int:
        return len(self._digests)

    def refusal(self, metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
        """None when the metadata carries an accepted key, else why not: a key of REFUSALS."""
        return self.check(metadata).refusal

    def check(self, metadata: Iterable[tuple[str, str | bytes]]) -> KeyCheck:
        """The verdict on the metadata's key: why it is refused (a key of REFUSALS), or the digest of the accepted
        key, which identifies the caller (per-key limits, overfill/serving/key_limits.py) without holding the key."""
        values = [value for key, value in metadata if key.lower() == AUTH_METADATA_KEY]
        if not values:
            return KeyCheck("missing", None)
        value = values[0].decode("ascii", "replace") if isinstance(values[0], bytes) else values[0]
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != BEARER or not token:
            return KeyCheck("malformed", None)
        sent = _digest(token)
        matched = False
        for digest in self._digests:  # every key, no early exit
            matched |= hmac.compare_digest(sent, digest)
        # The sent digest equals the matched key's: naming the caller by it needs no index of which key matched.
        return KeyCheck(None, sent) if matched else KeyCheck("invalid", None)
