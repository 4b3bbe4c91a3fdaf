"""The shared AttestMesh indexer (DESIGN §5): one service per chain that pushes signed cluster events.

Owns: following every cluster the ``ClusterFactory`` deploys (plus an explicit list) in bounded, confirmed
ranges with reorg handling (``follower``, over the pure in-memory ``chainindex``); serving members of a
cluster over a WebSocket with the v1 push protocol (``sessions``; the protocol itself is
``sidecar.core.indexerwire``, never re-implemented here); health, status and metrics bound before catch-up,
its own signing key from ``GetKey`` and the start-up comparison with ``IndexerRegistry.current()``
(``service``); its configuration (``settings``).

Must not: decide membership for clients (pushes only wake a sidecar's reconciler; membership is always
re-read from the chain by the sidecar), hold or ask for any member's keys (it only reads members' public
identity keys from the chain), serve anyone who is not a current member of the cluster they subscribe to,
drop a message silently (a subscriber that cannot keep up is closed with a reason and resumes from its
cursor), or log its signing seed.
"""
