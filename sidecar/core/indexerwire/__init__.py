"""The indexer⇄sidecar push protocol, version 2: one implementation, imported by the indexer and the sidecar.

Split the way h11 splits HTTP/1.1: ``messages`` (the six values and the limits), ``codec`` (their JSON text
form, ``encode`` / ``decode``), ``signing`` (the signed bytes, the signing helpers and the indexer's
``PushSigner``) and ``session`` (the indexer's ``verify_hello`` and the client's ``PushVerifier``).
docs/protocol.md is the specification, with test vectors asserted by tests/unit/test_indexerwire.py.

Owns the package's public API: everything below is re-exported here, so callers write
``from sidecar.core.indexerwire import X`` and never depend on which module holds X.

Must not: hold protocol logic of its own, do I/O, read a clock or draw random numbers.
"""

from __future__ import annotations

from sidecar.core.indexerwire.codec import decode, encode
from sidecar.core.indexerwire.messages import (
    CLOSE_REASONS,
    MAX_DATA_BYTES,
    MAX_DETAIL_CHARS,
    MAX_FRAME_BYTES,
    MAX_INT,
    MAX_LOG_INDEX,
    MAX_TOPICS,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SESSION_BYTES,
    SIGNATURE_BYTES,
    VERSION,
    Ack,
    Checkpoint,
    Close,
    CloseReason,
    Event,
    Hello,
    Message,
    Welcome,
    WireError,
)
from sidecar.core.indexerwire.session import (
    DEFAULT_HELLO_FRESHNESS_MS,
    MAX_REMEMBERED_HELLOS,
    HelloNonces,
    HelloRefusal,
    PushVerifier,
    Rejection,
    RejectReason,
    Verified,
    verify_hello,
)
from sidecar.core.indexerwire.signing import (
    DOMAIN_CHECKPOINT,
    DOMAIN_EVENT,
    DOMAIN_HELLO,
    DOMAIN_WELCOME,
    IndexerKey,
    PushSigner,
    sign_checkpoint,
    sign_event,
    sign_hello,
    sign_welcome,
    signed_bytes,
    verify_signature,
    verify_welcome,
    welcome_bytes,
)

__all__ = [
    "CLOSE_REASONS",
    "DEFAULT_HELLO_FRESHNESS_MS",
    "DOMAIN_CHECKPOINT",
    "DOMAIN_EVENT",
    "DOMAIN_HELLO",
    "DOMAIN_WELCOME",
    "MAX_DATA_BYTES",
    "MAX_DETAIL_CHARS",
    "MAX_FRAME_BYTES",
    "MAX_INT",
    "MAX_LOG_INDEX",
    "MAX_REMEMBERED_HELLOS",
    "MAX_TOPICS",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "SESSION_BYTES",
    "SIGNATURE_BYTES",
    "VERSION",
    "Ack",
    "Checkpoint",
    "Close",
    "CloseReason",
    "Event",
    "Hello",
    "HelloNonces",
    "HelloRefusal",
    "IndexerKey",
    "Message",
    "PushSigner",
    "PushVerifier",
    "RejectReason",
    "Rejection",
    "Verified",
    "Welcome",
    "WireError",
    "decode",
    "encode",
    "sign_checkpoint",
    "sign_event",
    "sign_hello",
    "sign_welcome",
    "signed_bytes",
    "verify_hello",
    "verify_signature",
    "verify_welcome",
    "welcome_bytes",
]
