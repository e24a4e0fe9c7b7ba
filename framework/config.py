"""turboserve configuration through ``dask.config`` (namespace ``turboserve``).

The defaults live in ``framework/turboserve.yaml`` (documented there). Importing this
module registers them; :func:`get` reads a key with an optional explicit override, the
pattern used by every constructor (arguments default to ``None`` and fall back to the
config).
"""

from __future__ import annotations

import pathlib
from typing import Any

import dask.config
import yaml

_DEFAULTS_PATH = pathlib.Path(__file__).with_name("turboserve.yaml")


def _load_defaults() -> dict[str, Any]:
    with _DEFAULTS_PATH.open() as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)
    return defaults


DEFAULTS = _load_defaults()


def get(key: str, override: Any = None) -> Any:
    """``override`` if given, else ``dask.config.get("turboserve." + key)``."""
    if override is not None:
        return override
    return dask.config.get(f"turboserve.{key}")


def parse_override(item: str) -> tuple[str, Any]:
    """Parse a CLI ``key=value`` (value as YAML) into a full ``turboserve.*`` key."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"config override {item!r} is not of the form key=value")
    key = key.strip()
    if not key.startswith("turboserve."):
        key = "turboserve." + key
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"config override {item!r}: the value is not valid YAML ({reason})") from None


def resolved() -> dict[str, Any]:
    """The whole resolved ``turboserve`` configuration (for ``DIR/config.yaml``)."""
    return {"turboserve": dask.config.get("turboserve")}
