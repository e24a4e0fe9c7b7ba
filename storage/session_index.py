"""The registry's durable part: one small document per open session, beside its checkpoints.

The scheduler plugin keeps the session registry in memory; when the scheduler process
dies, it dies with it. A :class:`SessionIndex` in the checkpoint store records what a new
scheduler needs to adopt a session again: its identity (id, model, prompt, seed, size),
its opener's access-token digest (:mod:`workers.access`) and when it was opened. The
plugin writes the document at ``open`` and removes it at ``close``; a new scheduler on
the same store reads every document and registers those sessions as suspended to disk,
to be resumed from their checkpoints (or regenerated from chunk 0 when none was saved;
generation is deterministic, so the frames are the same).

The documents live in the zarr store's root under the reserved group ``__sessions__``
(a checkpoint's session id may not start with ``__``), one child group per session
whose attributes are the document, so any URL the store takes works here too.

>>> index = SessionIndex("memory://doctest-index")
>>> index.put({"session_id": "s1", "model": "tiny", "prompt": "a red fox", "seed": 0})
>>> [d["session_id"] for d in index.documents()]
['s1']
>>> index.remove("s1"), index.documents()
(True, [])
"""

from __future__ import annotations

import os
from typing import Any

from storage.zarr_store import open_root, open_store, require_group

#: The reserved root group that holds the documents.
GROUP = "__sessions__"
#: Fields every document must carry to be adopted.
REQUIRED = ("session_id", "model", "prompt", "seed")


class SessionIndex:
    """The open sessions' documents in the checkpoint store at ``url``.

    Calls block (zarr's synchronous API): from async code run them in a thread.
    """

    def __init__(self, url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> None:
        self.url = os.fspath(url)
        self._root = open_root(open_store(self.url, storage_options=storage_options))

    def __repr__(self) -> str:
        return f"SessionIndex({self.url!r})"

    def put(self, document: dict[str, Any]) -> None:
        """Record (or replace) the document of ``document["session_id"]`` (plain JSON values)."""
        sid = document.get("session_id")
        if not isinstance(sid, str) or not sid or "/" in sid or sid.startswith("__"):
            raise ValueError(f"session id {sid!r} cannot name a zarr node")
        require_group(require_group(self._root, GROUP), sid).attrs.put(dict(document))

    def remove(self, session_id: str) -> bool:
        """Forget the session's document; False when there was none."""
        group = self._group()
        if group is None or session_id not in group.group_keys():
            return False
        del group[session_id]
        return True

    def documents(self) -> list[dict[str, Any]]:
        """Every complete document, by session id (incomplete ones are skipped)."""
        group = self._group()
        if group is None:
            return []
        docs = []
        for _name, child in sorted(group.groups()):
            doc = dict(child.attrs)
            if all(k in doc for k in REQUIRED):
                docs.append(doc)
        return docs

    def _group(self) -> Any:
        return self._root[GROUP] if GROUP in self._root.group_keys() else None
