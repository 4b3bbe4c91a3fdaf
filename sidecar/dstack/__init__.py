"""The dstack adapter: the guest agent, reached only through the official ``dstack-sdk``.

Must not import the chain adapter or the devnet; the pure core never imports this package.
"""

from sidecar.dstack.agent import (
    DerivedKey,
    GuestAgent,
    GuestAgentError,
    GuestAgentRejected,
    GuestAgentUnavailable,
    NodeInfo,
    Quote,
)

__all__ = [
    "DerivedKey",
    "GuestAgent",
    "GuestAgentError",
    "GuestAgentRejected",
    "GuestAgentUnavailable",
    "NodeInfo",
    "Quote",
]
