"""Session access tokens: a session is reachable only with the capability its opener got.

The opening client makes a random token (:func:`new_token`) and sends it with ``open``
(the scheduler makes one when none is sent); only that client holds it (the
:class:`framework.Session` handle keeps it; ``Session.access_token``). The
scheduler plugin keeps the token's digest in the session's record and checks it in every
per-session RPC handler (locate, info, events, pause, suspend, resume, migrate, close:
:meth:`framework.session_handlers.SessionHandlers.owned`);
the session's actors get the digests they accept at construction (the session's, and the
control plane's own: :class:`framework.session_mechanisms.SessionActors` calls them with
a token of its own) and check every call (:func:`workers.session_actor.handle_call`):
polls, acknowledgements, takes, requests, prompt switches, state exports. A call without
the token, or with another one, is refused with :class:`SessionAccessDenied`, which says
how to hand the session over: pass the token, ``server.session(id, access_token=...)``.

Only digests (SHA-256) travel in task arguments and records; the token itself goes to
the opening client, and with the calls that present it.

What this guards is turboserve's own API, not Dask's: a Dask client can run code on the
scheduler and the workers (``run_on_scheduler``, ``submit``), so users who must not
reach each other's sessions must not hold a Dask client of the cluster
(``docs/RELIABILITY.md``, "Isolation").

>>> token = new_token()
>>> allowed({digest(token)}, token), allowed({digest(token)}, "guess"), allowed({digest(token)}, None)
(True, False, False)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Any

from workers.errors import SessionAccessDenied

#: Bytes of randomness in a token (URL-safe base64 text of about 1.3x as many characters).
TOKEN_BYTES = 24


def new_token() -> str:
    """A fresh random access token (URL-safe text)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> str:
    """The SHA-256 hex digest of ``token``: what records and actors keep instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def allowed(digests: Iterable[str], token: str | None) -> bool:
    """Whether ``token`` is one of the tokens whose ``digests`` are given (constant-time compare)."""
    if not isinstance(token, str) or not token:
        return False
    mine = digest(token)
    return any(hmac.compare_digest(mine, d) for d in digests if d)


def denied(session_id: str, token: str | None) -> SessionAccessDenied:
    """The refusal of a call on ``session_id`` that carried ``token`` (None: no token)."""
    what = "no access token" if not token else "an access token that is not this session's"
    return SessionAccessDenied(
        f"session {session_id!r} belongs to the client that opened it, and this call carried {what}. "
        "Use the Session handle that open_session returned; to hand the session to another client on "
        f"purpose, give it session.access_token and call server.session({session_id!r}, access_token=token) there"
    )


class TokenRPC:
    """An RPC handle (a worker's or the scheduler's, or a proxy) that sends ``access_token`` with every call.

    >>> rpc = TokenRPC(BoundedRPC(client.rpc, worker), session.access_token)   # doctest: +SKIP
    >>> await call_actor(rpc, key, "poll", 3)                                    # doctest: +SKIP
    """

    __slots__ = ("rpc", "token")

    def __init__(self, rpc: Any, token: str | None) -> None:
        self.rpc, self.token = rpc, token

    def __getattr__(self, op: str):
        send = getattr(self.rpc, op)

        def call(**kwargs: Any) -> Any:
            return send(access_token=self.token, **kwargs)

        return call
