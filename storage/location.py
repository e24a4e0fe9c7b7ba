"""Where a cluster's checkpoint store lives: ``turboserve.state.store`` resolved per cluster.

The default, ``auto``, is a folder of its own for every cluster, under the system's
temporary directory and named by the scheduler's id, so two servers started in the same
folder (or two test runs) never read each other's checkpoints by accident. Any other
value is a path or fsspec URL used as given (share it on purpose: a multi-host cluster
needs a store every worker reaches, and a scheduler restart that should find the old
sessions needs the same store again); ``null`` (or ``none``, ``""``) disables
checkpoints.

Example
-------
>>> resolve_store("s3://bucket/state", "Scheduler-1234")
's3://bucket/state'
>>> resolve_store(None, "Scheduler-1234") is None
True
>>> resolve_store("auto", "Scheduler-1a2b").endswith("turboserve-state/Scheduler-1a2b")
True
"""

from __future__ import annotations

import os
import re
import tempfile

#: The value of ``turboserve.state.store`` that means "a folder per cluster".
AUTO = "auto"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def auto_store_path(cluster_id: str) -> str:
    """``<tempdir>/turboserve-state/<cluster_id>`` (the id made safe as a folder name)."""
    if not isinstance(cluster_id, str) or not cluster_id.strip():
        raise ValueError(f"cluster id must be a non-empty string (the scheduler's id), got {cluster_id!r}")
    name = _UNSAFE.sub("_", cluster_id.strip()).lstrip(".") or "cluster"
    return os.path.join(tempfile.gettempdir(), "turboserve-state", name)


def resolve_store(url: str | os.PathLike[str] | None, cluster_id: str) -> str | None:
    """The checkpoint store URL of the cluster whose scheduler id is ``cluster_id``.

    Parameters
    ----------
    url
        The configured value (``turboserve.state.store``): ``"auto"``, a path or URL,
        or None / ``"none"`` / ``""`` for no store.
    cluster_id
        The scheduler's id (``client.scheduler_info()["id"]``, ``scheduler.id``).
    """
    if url is None:
        return None
    text = os.fspath(url).strip()
    if text.lower() in ("", "none", "null"):
        return None
    if text == AUTO:
        return auto_store_path(cluster_id)
    return text


def is_auto(url: str | os.PathLike[str] | None) -> bool:
    """Whether ``url`` asks for the per-cluster default."""
    return url is not None and os.fspath(url).strip() == AUTO


__all__ = ["AUTO", "auto_store_path", "is_auto", "resolve_store"]
