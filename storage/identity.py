"""Whose state a checkpoint holds, and the digest that seals a checkpoint's metadata.

A session is fully defined by ``(model, prompt, seed)``; its checkpoint must also name
the session it belongs to, so that a checkpoint copied or moved into another session's
folder is refused instead of being streamed as that session's video. A
:class:`CheckpointIdentity` is that name, kept beside the state in the checkpoint; the
prompt is recorded as a digest (the full prompt stays in the state's own metadata).

:func:`seal` is a SHA-256 digest of a JSON document in canonical form (sorted keys, no
spaces): the checkpoint stores the digest of its metadata (identity, state meta, tensor
checksums, generation name), so a changed byte anywhere in it (a flipped bit of the
stored chunk index, an edited seed) is caught on load. It guards against accidental
damage and copies, not against someone who rewrites the digest too (there is no key).

Example
-------
>>> ident = CheckpointIdentity.of("s1", "tiny", "a red fox", 0)
>>> ident.prompt_digest == prompt_digest("a red fox")
True
>>> ident.differences(CheckpointIdentity.of("s1", "tiny", "a red fox", 1))
['seed 0 (expected 1)']
>>> seal({"b": 1, "a": [1, 2]}) == seal({"a": (1, 2), "b": 1})
True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any


def prompt_digest(prompt: str) -> str:
    """``"sha256:<hex>"`` of the prompt's UTF-8 bytes."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return "sha256:" + hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def seal(doc: Any) -> str:
    """``"sha256:<hex>"`` of ``doc`` as canonical JSON (sorted keys, tuples as lists).

    Raises
    ------
    TypeError
        If ``doc`` holds something JSON cannot represent.
    """
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class CheckpointIdentity:
    """The session a checkpoint belongs to: what a loader compares before trusting it.

    Attributes
    ----------
    session_id
        The session's id.
    model
        The model preset that made the state.
    prompt_digest
        :func:`prompt_digest` of the session's prompt.
    seed
        The session's seed.

    Examples
    --------
    >>> CheckpointIdentity.of("s1", "tiny", "a red fox", 7).seed
    7
    """

    session_id: str
    model: str
    prompt_digest: str
    seed: int

    @classmethod
    def of(cls, session_id: str, model: str, prompt: str, seed: int) -> CheckpointIdentity:
        """The identity of the session opened with ``(model, prompt, seed)``."""
        return cls(session_id, model, prompt_digest(prompt), int(seed))

    @classmethod
    def from_dict(cls, doc: Any) -> CheckpointIdentity:
        """Rebuild from :meth:`to_dict` (raises ``ValueError`` for a malformed document)."""
        try:
            return cls(str(doc["session_id"]), str(doc["model"]), str(doc["prompt_digest"]), int(doc["seed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed checkpoint identity {doc!r}: {exc!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored in the checkpoint's metadata)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def differences(self, expected: CheckpointIdentity) -> list[str]:
        """What in this identity differs from ``expected``, one phrase per field."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(expected, f.name)
            if mine == theirs:
                continue
            if f.name == "prompt_digest":
                out.append(f"prompt digest {mine[:15]}... (expected {theirs[:15]}...): another prompt")
            else:
                out.append(f"{f.name.replace('_', ' ')} {mine!r} (expected {theirs!r})")
        return out


__all__ = ["CheckpointIdentity", "prompt_digest", "seal"]
