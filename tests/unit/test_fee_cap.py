"""The fee cap's pricing (``sidecar.chain.tx.FeeCap``): the tip clamped, the fee cap clamped when the
transaction still fits, ``FeeAboveCap`` (transient, named ``fee_cap``) when the base fee plus tip does not.
The lying RPC itself is in tests/component/test_fee_cap.py."""

from __future__ import annotations

import pytest

from sidecar.chain.errors import FeeAboveCap
from sidecar.chain.tx import FeeCap

GWEI = 10**9
CAP = FeeCap(max_fee=10 * GWEI, max_tip=2 * GWEI)


def test_the_cap_prices_within_itself() -> None:
    assert CAP.price(GWEI, GWEI) == (3 * GWEI, GWEI)  # 2 x base fee + tip, under the cap
    assert CAP.price(6 * GWEI, GWEI) == (CAP.max_fee, GWEI)  # 7 gwei fits: the fee cap is clamped to 10
    assert CAP.price(GWEI, 50 * GWEI) == (4 * GWEI, CAP.max_tip)  # the tip is clamped
    with pytest.raises(FeeAboveCap) as refused:
        CAP.price(9 * GWEI, 5 * GWEI)  # 9 + 2 (clamped) = 11 gwei cannot fit
    assert refused.value.transient
    assert str(refused.value) == (
        "fee_cap: base fee 9 gwei + tip 2 gwei per gas exceeds the cap of 10 gwei (ATTESTMESH_MAX_FEE_GWEI); "
        "transaction not sent"
    )


def test_a_tip_cap_above_the_fee_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tip <= max_fee"):
        FeeCap(max_fee=GWEI, max_tip=2 * GWEI)
