"""Gas (and wall time) of the membership transactions: register, setEndpoint, setCskCommitment, rotateCsk,
removeMember.

Each run starts from a fresh stack on a fresh anvil (127.0.0.1, automine), registers three members with
real dstack signature chains from the devnet KMS (each app id a member app the factory deployed for the
cluster), changes one endpoint in each form the contract validates, commits the CSK from the originator,
rotates it and commits epoch 2, and evicts two members (the second with rotate-on-remove set). Gas is
deterministic for fixed inputs; the medians over the runs show it, and the wall-time medians show the cost
of one submit + receipt round trip through our submitter.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable

from eth_utils.crypto import keccak

from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.deployment import deploy_member_app, deploy_stack
from devnet.kms import DevnetKms, get_key
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.core.keys import KeyPath, KeyScope, ed25519_public_key, x25519_public_key
from sidecar.core.model import MemberKeys, TxReceipt
from sidecar.core.sigchain import build_proof

#: The chain and cluster the bench's members derive their keys for (any one does: no node predicts them).
BENCH_KEYS = KeyScope(31337, Address(bytes(20)))

RUNS = 5
MEMBERS = 3
#: setEndpoint in every form the contract's grammar check walks (the check's cost grows with the length).
ENDPOINTS = (
    ("udp://IPv4", "udp://10.0.0.2:51821"),
    ("legacy IPv4", "10.0.0.2:51822"),
    ("udp://[IPv6]", "udp://[2001:db8:0:1:2:3:4:5]:51820"),
    ("tls:// gateway route", "tls://" + "ab" * 20 + "-51820s.dstack-prod5.phala.network:443"),
)


async def one_run(rpc_url: str, salt: int) -> dict[str, list[tuple[int, float]]]:
    kms = DevnetKms()
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    async with await connect(rpc_url) as conn:
        owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY))
        deployment = await deploy_stack(
            conn,
            owner,
            kms_roots=(kms.root_address,),
            compose_hashes=(Bytes32(keccak(b"bench")),),
            salt=Bytes32(keccak(salt.to_bytes(8, "big"))),
        )
        admin = ClusterClient(conn, deployment.cluster, owner)
        members = []
        for i in range(MEMBERS):
            app = await deploy_member_app(
                conn, owner, deployment.member_app_factory, deployment.cluster, f"n{i}"
            )
            await admin.add_allowed_app_id(app)
            key, chain = get_key(kms, app, BENCH_KEYS.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
            proof = build_proof(app, key, chain)
            await owner.send(proof.signer, b"", value=10**18)
            keys = MemberKeys(
                seal_pub=Bytes32(x25519_public_key(get_key(kms, app, BENCH_KEYS.path(KeyPath.SEAL), "")[0])),
                wg_pub=Bytes32(
                    x25519_public_key(get_key(kms, app, BENCH_KEYS.path(KeyPath.WIREGUARD), "")[0])
                ),
                identity_pub=Bytes32(
                    ed25519_public_key(get_key(kms, app, BENCH_KEYS.path(KeyPath.IDENTITY), "")[0])
                ),
            )
            member = ClusterClient(conn, deployment.cluster, TxSubmitter(conn, LocalSigner(key)))
            t0 = time.perf_counter()
            receipt, member_id = await member.register(proof, keys, f"10.0.0.{i + 1}:51820")
            out[f"register (member {i + 1})"].append((receipt.gas_used, time.perf_counter() - t0))
            members.append((member, member_id))

        async def timed(name: str, sent: Awaitable[TxReceipt]) -> None:
            t0 = time.perf_counter()
            receipt = await sent
            out[name].append((receipt.gas_used, time.perf_counter() - t0))

        second, originator = members[1][0], members[0][0]
        for form, endpoint in ENDPOINTS:
            await timed(f"setEndpoint ({form})", second.set_endpoint(endpoint))
        await timed("setCskCommitment (epoch 1)", originator.set_csk_commitment(1, Bytes32(keccak(b"1"))))
        await timed("rotateCsk", admin.rotate_csk())
        await timed("setCskCommitment (epoch 2)", originator.set_csk_commitment(2, Bytes32(keccak(b"2"))))
        await timed("removeMember (last of 3)", admin.remove_member(members[-1][1]))
        await admin.set_rotate_csk_on_remove(True)
        await timed("removeMember (first of 2, shifts 1, rotates)", admin.remove_member(members[0][1]))
    return out


async def main() -> None:
    totals: dict[str, list[tuple[int, float]]] = defaultdict(list)
    async with AnvilProcess() as anvil:
        for run in range(RUNS):
            for name, samples in (await one_run(anvil.rpc_url, run)).items():
                totals[name] += samples
    print(f"gas of membership transactions — {RUNS} runs, anvil automine on 127.0.0.1")
    print(
        f"{'transaction':46} {'gas median':>10} {'min':>8} {'max':>8} {'x 21000':>8} {'wall ms median':>15}"
    )
    for name, samples in totals.items():
        gas_values = [g for g, _ in samples]
        med = statistics.median(gas_values)
        wall = statistics.median(t for _, t in samples) * 1000
        low, high = min(gas_values), max(gas_values)
        print(f"{name:46} {med:>10.0f} {low:>8} {high:>8} {med / 21000:>8.2f} {wall:>15.1f}")
