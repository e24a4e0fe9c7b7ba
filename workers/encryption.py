"""Which of turboserve's channels are encrypted when the Dask cluster uses TLS.

Everything that goes over Dask's comms is as encrypted as the cluster is: client <->
scheduler RPCs, client <-> worker polls of a session's chunks, chunk futures, the
scheduler's calls to session actors, and the host-staged state moves (a target actor
pulling the state from its source over worker-to-worker comms). Two channels are not
Dask's and carry no TLS, whatever the cluster's ``Security`` says:

- the point-to-point state transport (``transport="p2p"``, :mod:`workers.p2p`): a private
  ``torch.distributed`` group (gloo or NCCL) with a ``TCPStore`` rendezvous;
- the collectives of a parallel group (degree > 1, :mod:`workers.parallel_group`).

On a TLS cluster (:func:`encrypted`) the runtime therefore never takes them: ``auto``
chooses the host-staged path, an explicit ``p2p`` is refused with
:data:`P2P_UNDER_TLS` (the configured default ``p2p`` falls back to ``host``), and a
parallel group is refused with :data:`GROUPS_UNDER_TLS` (``docs/RELIABILITY.md``).

>>> encrypted("tls://10.0.0.2:8786"), encrypted("tcp://10.0.0.2:8786"), encrypted(None)
(True, False, False)
"""

from __future__ import annotations

#: The refusal of ``transport="p2p"`` on a TLS cluster.
P2P_UNDER_TLS = (
    "transport 'p2p' sends the session's state in the clear (a torch.distributed gloo/NCCL group, "
    "outside Dask's TLS) and this cluster uses TLS; use transport='host' (staged over Dask's "
    "encrypted comms) or 'auto' (which picks 'host' under TLS)"
)
#: The refusal of a parallel group on a TLS cluster.
GROUPS_UNDER_TLS = (
    "a parallel group exchanges activations over a torch.distributed group, outside Dask's TLS, "
    "and this cluster uses TLS; serve at degree 1 on a TLS cluster"
)


def encrypted(address: str | None) -> bool:
    """Whether ``address`` (a Dask scheduler or worker address) is reached over TLS."""
    return isinstance(address, str) and address.startswith("tls://")
