"""Short random ids of sessions, events, ops and parallel groups.

One rule for all of them (:func:`new_id`), made on the floor that makes the first of
them (a session actor names its events), so the scheduler's registry, session handlers,
session mechanisms and parallel groups use the same one. An id is a name, not a
capability: what guards a session is its access token (:func:`workers.access.new_token`).

>>> len(new_id()), new_id() != new_id()
(12, True)
"""

from __future__ import annotations

import uuid

#: Hex characters in an id (48 random bits: a collision among a million ids has odds of about 1 in 560).
ID_CHARS = 12


def new_id() -> str:
    """A fresh random id: :data:`ID_CHARS` lowercase hex characters of a UUID4."""
    return uuid.uuid4().hex[:ID_CHARS]
