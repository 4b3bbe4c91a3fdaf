"""The cluster shared key's cryptography: commitment, signed requests, sealed delivery and the local cache.

Owns everything about the CSK that is pure computation: ``commitment``; the CSK request (``CskRequest``,
``sign_request``, ``parse_request``) and response (``sign_response``, ``check_response``); delivery sealed
to the requester's proven X25519 seal key (``seal`` / ``open_sealed``); the originator's derivation
(``csk_from_key``); and the encrypted cache (``seal_cache`` / ``open_cache``). Must not do I/O, read a
clock, or let key material into an exception message or a repr (secrets travel as ``SecretBytes``).

CSK: 32 bytes, one per epoch (``Cluster.cskEpoch``, from 1). ``commitment(csk) = keccak256(csk)``, set on
chain once per epoch by the originator. The originator's CSK of epoch E is its GetKey output for
``attestmesh/csk/v1/<chain id>/<cluster>/<E>`` used as-is (``csk_from_key`` only checks the length), so it
re-derives the same key after any restart.

Request, version 3 (JSON object, the body of the peer API call; docs/protocol.md §11)::

    {"version": 3, "cluster": "0x<20 bytes hex>", "epoch": <integer, 1 <= e < 2**64>,
     "requester": "0x<32 bytes hex>", "responder": "0x<32 bytes hex>",
     "timestamp_ms": <integer, unix ms, 0 <= t < 2**64>, "signature": "0x<64 bytes hex>",
     "proof": {<member proof, sidecar.core.memberproof>}}

Exactly these keys (``proof`` may be absent: refused ``no_proof``; a version-1 request, the keys cluster,
requester, responder, timestamp_ms and signature only, parses with epoch 0 and is refused ``no_proof``;
version 2, which named no epoch, is malformed); hex is 0x-prefixed (either case). The signature is Ed25519
by the requester's identity key over ``b"attestmesh/csk-request/v3\\x00" ‖ cluster(20) ‖ epoch (u64
big-endian) ‖ requester(32) ‖ responder(32) ‖ timestamp_ms (u64 big-endian)``. Naming the responder stops
a request to one peer being replayed to another; the timestamp and the gate's memory stop replays to the
same peer; naming the epoch binds the answer to the key asked for.

Gate: ``sidecar.core.cskgate`` judges a parsed ``SignedRequest`` (membership, member proof, signature,
freshness, replay, rate, liveness).

Sealed delivery: a libsodium sealed box (``crypto_box_seal``) of the 32-byte CSK to the PROVEN X25519 seal
key. The response (version 3) is ``{"version": 3, "sealed": hex, "proof": {...}, "signature": hex}``: the
responder's own member proof and its Ed25519 signature (proven identity key) over
``b"attestmesh/csk-response/v3\\x00" ‖ cluster ‖ epoch ‖ requester ‖ responder ‖ timestamp_ms ‖ sealed``, so
a non-TEE cannot pass off a key by replaying a member's (public) proof. ``check_response``: the proof
verifies and proves the responder asked, the signature verifies; then the requester opens the box with
its seal key and checks it against the commitment of the epoch it asked for.

Cache (version 1, 77 bytes)::

    b"AMCK" ‖ version=1 (1 B) ‖ nonce (24 B, random) ‖ XChaCha20-Poly1305(csk) (32 + 16 B)

The AEAD key is HKDF-SHA256(state key, info=b"attestmesh/csk-cache/v1") so the state key itself is never
used directly by two purposes; AAD = ``b"attestmesh/csk-cache/v1\\x00" ‖ cluster(20) ‖ member(32) ‖
commitment(32)``. Opening checks length, magic, version, the AEAD tag (so a cache from another cluster,
member, commitment or key fails) and finally keccak256(csk) == commitment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.public import PrivateKey, PublicKey, SealedBox

from sidecar.core.hashing import keccak256
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import ed25519_verifies
from sidecar.core.memberproof import (
    MemberProof,
    ProofAnchors,
    ProofRejected,
    parse_proof,
    proof_json,
    verify_member_proof,
)

CSK_BYTES = 32
REQUEST_VERSION = 3
REQUEST_DOMAIN = b"attestmesh/csk-request/v3\x00"
RESPONSE_DOMAIN = b"attestmesh/csk-response/v3\x00"
CACHE_DOMAIN = b"attestmesh/csk-cache/v1\x00"
CACHE_KDF_INFO = b"attestmesh/csk-cache/v1"
CACHE_MAGIC = b"AMCK"
CACHE_VERSION = 1
_NONCE_BYTES = 24
_TAG_BYTES = 16
CACHE_BYTES = len(CACHE_MAGIC) + 1 + _NONCE_BYTES + CSK_BYTES + _TAG_BYTES
SEALED_BYTES = 48 + CSK_BYTES  # ephemeral public key (32) + MAC (16) + the CSK
MAX_REQUEST_JSON_BYTES = 2048  # a hint for the HTTP layer: a valid request body is about 1 600 bytes
_U64 = 2**64
_V1_KEYS = frozenset({"cluster", "requester", "responder", "timestamp_ms", "signature"})
_REQUEST_KEYS = _V1_KEYS | {"version", "epoch", "proof"}
_RESPONSE_KEYS = frozenset({"version", "sealed", "proof", "signature"})


class CskError(Exception):
    """A CSK that cannot be used (does not open, wrong length, does not match the commitment)."""


class CskWireError(CskError):
    """A malformed CSK request; the message is a short reason safe to log and return."""


def _csk_bytes(csk: SecretBytes) -> bytes:
    raw = csk.reveal()
    if len(raw) != CSK_BYTES:
        raise CskError(f"CSK must be {CSK_BYTES} bytes")
    return raw


def commitment(csk: SecretBytes) -> Bytes32:
    """Return keccak256(csk), the value committed on chain."""
    return Bytes32(keccak256(_csk_bytes(csk)))


def csk_from_key(key: SecretBytes) -> SecretBytes:
    """Return the originator's CSK: its 32-byte GetKey output for the epoch's CSK path, unchanged."""
    if len(key) != CSK_BYTES:
        raise CskError(f"CSK derivation key must be {CSK_BYTES} bytes")
    return SecretBytes(key.reveal())


# --- requests ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CskRequest:
    """A member asking one peer for the CSK of one epoch (0 only in a parsed version-1 request)."""

    cluster: Address
    requester: MemberId
    responder: MemberId
    timestamp_ms: int
    epoch: int = 1  # the cluster's first CSK epoch


def request_message(req: CskRequest) -> bytes:
    """Return the exact bytes the request signature covers."""
    if not 0 <= req.timestamp_ms < _U64:
        raise CskWireError("timestamp out of range")
    if not 0 <= req.epoch < _U64:
        raise CskWireError("epoch out of range")
    return (
        REQUEST_DOMAIN
        + req.cluster.raw
        + struct.pack(">Q", req.epoch)
        + req.requester.raw
        + req.responder.raw
        + struct.pack(">Q", req.timestamp_ms)
    )


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A parsed request: its fields, the Ed25519 signature and the member proof's JSON value (None: none
    sent), judged by ``sidecar.core.cskgate.CskGate``."""

    request: CskRequest
    signature: bytes
    proof: object = None


def sign_request(req: CskRequest, identity_key: SecretBytes, proof: MemberProof | None) -> dict[str, object]:
    """Sign a request with the requester's Ed25519 identity seed; return its JSON object (with ``proof``
    unless None, which only a test of the ``no_proof`` refusal wants)."""
    signature = _ed25519(identity_key).sign(request_message(req))
    obj: dict[str, object] = {
        "version": REQUEST_VERSION,
        "cluster": "0x" + req.cluster.hex,
        "epoch": req.epoch,
        "requester": str(req.requester),
        "responder": str(req.responder),
        "timestamp_ms": req.timestamp_ms,
        "signature": "0x" + signature.hex(),
    }
    if proof is not None:
        obj["proof"] = proof_json(proof)
    return obj


def _ed25519(identity_key: SecretBytes) -> Ed25519PrivateKey:
    seed = identity_key.reveal()
    if len(seed) != 32:
        raise CskError("identity key must be a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def _hex_field(obj: dict[object, object], key: str, length: int) -> bytes:
    value = obj[key]
    if not isinstance(value, str) or len(value) != 2 + 2 * length or value[:2] not in ("0x", "0X"):
        raise CskWireError(f"{key} must be 0x-prefixed hex of {length} bytes")
    body = value[2:]
    if not all(c in "0123456789abcdefABCDEF" for c in body):
        raise CskWireError(f"{key} is not hexadecimal")
    return bytes.fromhex(body)


def _version(obj: dict[object, object]) -> None:
    version = obj["version"]
    if isinstance(version, bool) or version != REQUEST_VERSION:
        raise CskWireError(f"unsupported version (this node speaks {REQUEST_VERSION})")


def parse_request(obj: object) -> SignedRequest:
    """Validate an untrusted JSON value's form; return the signed request or raise CskWireError."""
    if not isinstance(obj, dict):
        raise CskWireError("request must be a JSON object")
    keys = set(obj)
    epoch = 0
    if keys != _V1_KEYS:  # version 1 had no version and no proof: it parses, and is refused no_proof
        if "version" in keys:
            _version(obj)
        if not _V1_KEYS | {"version", "epoch"} <= keys <= _REQUEST_KEYS:
            raise CskWireError("request must have exactly: " + ", ".join(sorted(_REQUEST_KEYS)))
        epoch = obj["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch < _U64:
            raise CskWireError("epoch must be an integer in [1, 2**64)")
    timestamp = obj["timestamp_ms"]
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < _U64:
        raise CskWireError("timestamp_ms must be an integer in [0, 2**64)")
    req = CskRequest(
        cluster=Address(_hex_field(obj, "cluster", 20)),
        requester=MemberId(_hex_field(obj, "requester", 32)),
        responder=MemberId(_hex_field(obj, "responder", 32)),
        timestamp_ms=timestamp,
        epoch=epoch,
    )
    return SignedRequest(req, _hex_field(obj, "signature", 64), obj.get("proof"))


def verify_request(req: CskRequest, signature: bytes, identity_pub: Bytes32) -> bool:
    """Tell whether the signature over the request verifies against the Ed25519 public key."""
    return ed25519_verifies(identity_pub, signature, request_message(req))


# --- responses -------------------------------------------------------------------------------------------


def response_message(req: CskRequest, sealed: bytes) -> bytes:
    """Return the exact bytes the responder's signature covers: the request it answers and the box."""
    if len(sealed) != SEALED_BYTES:
        raise CskWireError(f"sealed box must be {SEALED_BYTES} bytes")
    return RESPONSE_DOMAIN + request_message(req)[len(REQUEST_DOMAIN) :] + sealed


def sign_response(
    req: CskRequest, sealed: bytes, identity_key: SecretBytes, proof: MemberProof
) -> dict[str, object]:
    """The responder's answer: the box, its own member proof and its identity key's signature."""
    signature = _ed25519(identity_key).sign(response_message(req, sealed))
    return {
        "version": REQUEST_VERSION,
        "sealed": "0x" + sealed.hex(),
        "proof": proof_json(proof),
        "signature": "0x" + signature.hex(),
    }


def check_response(req: CskRequest, obj: object, anchors: ProofAnchors) -> bytes:
    """Check an untrusted response to ``req``: its form (``CskWireError``), that its proof proves a TEE of
    this cluster that is the responder asked (``ProofRejected``) and that the proven identity key signed
    it (``ProofRejected``, ``bad_proof``). Return the sealed box, still to be opened and checked against
    the commitment."""
    if not isinstance(obj, dict):
        raise CskWireError("response must be a JSON object")
    if set(obj) != _RESPONSE_KEYS:
        raise CskWireError("response must have exactly: " + ", ".join(sorted(_RESPONSE_KEYS)))
    _version(obj)
    sealed = _hex_field(obj, "sealed", SEALED_BYTES)
    signature = _hex_field(obj, "signature", 64)
    proven = verify_member_proof(parse_proof(obj["proof"]), anchors)
    if proven.member_id != req.responder:
        raise ProofRejected("bad_proof", "the proof is another member's than the responder asked")
    if not ed25519_verifies(proven.identity_pub, signature, response_message(req, sealed)):
        raise ProofRejected("bad_proof", "the response is not signed by the proven identity key")
    return sealed


# --- sealed delivery -------------------------------------------------------------------------------------


def seal(csk: SecretBytes, seal_pub: Bytes32) -> bytes:
    """Seal the CSK to a member's on-chain X25519 seal key (libsodium sealed box)."""
    return bytes(SealedBox(PublicKey(seal_pub.raw)).encrypt(_csk_bytes(csk)))


def open_sealed(box: bytes, seal_key: SecretBytes, commitment: Bytes32) -> SecretBytes:
    """Open a sealed CSK with our seal key and check it against the on-chain commitment."""
    if len(box) != SEALED_BYTES:
        raise CskError("sealed CSK has the wrong length")
    if len(seal_key) != 32:
        raise CskError("seal key must be 32 bytes")
    try:
        raw = bytes(SealedBox(PrivateKey(seal_key.reveal())).decrypt(box))
    except nacl.exceptions.CryptoError:
        raise CskError("sealed CSK does not open with our seal key") from None
    return _checked(raw, commitment)


def _checked(raw: bytes, commitment: Bytes32) -> SecretBytes:
    if len(raw) != CSK_BYTES:
        raise CskError(f"CSK must be {CSK_BYTES} bytes")
    if keccak256(raw) != commitment.raw:
        raise CskError("CSK does not match the on-chain commitment")
    return SecretBytes(raw)


# --- encrypted cache -----------------------------------------------------------------------------------


def _cache_key(state_key: SecretBytes) -> bytes:
    if len(state_key) != 32:
        raise CskError("state key must be 32 bytes")
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=CACHE_KDF_INFO).derive(state_key.reveal())


def _cache_aad(cluster: Address, member: MemberId, commitment: Bytes32) -> bytes:
    return CACHE_DOMAIN + cluster.raw + member.raw + commitment.raw


def seal_cache(
    csk: SecretBytes, state_key: SecretBytes, cluster: Address, member: MemberId, commitment: Bytes32
) -> bytes:
    """Encrypt the CSK for the local cache, bound to cluster, member and commitment."""
    raw = _checked(_csk_bytes(csk), commitment).reveal()
    nonce = nacl.utils.random(_NONCE_BYTES)
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        raw, _cache_aad(cluster, member, commitment), nonce, _cache_key(state_key)
    )
    return CACHE_MAGIC + bytes([CACHE_VERSION]) + nonce + bytes(sealed)


def open_cache(
    blob: bytes, state_key: SecretBytes, cluster: Address, member: MemberId, commitment: Bytes32
) -> SecretBytes:
    """Decrypt a cached CSK; raise CskError unless it is ours, intact and matches the commitment."""
    if len(blob) != CACHE_BYTES:
        raise CskError("CSK cache has the wrong length")
    if blob[:4] != CACHE_MAGIC:
        raise CskError("CSK cache has a bad magic")
    if blob[4] != CACHE_VERSION:
        raise CskError("CSK cache has an unsupported version")
    nonce, sealed = blob[5 : 5 + _NONCE_BYTES], blob[5 + _NONCE_BYTES :]
    try:
        raw = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed, _cache_aad(cluster, member, commitment), nonce, _cache_key(state_key)
        )
    except nacl.exceptions.CryptoError:
        raise CskError("CSK cache does not open (other key, cluster, member or commitment)") from None
    return _checked(bytes(raw), commitment)
