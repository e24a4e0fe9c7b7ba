"""Exact tensor <-> numpy conversion for storage, and content checksums.

zarr and numpy have no ``bfloat16`` (nor the float8 types), so such tensors are stored
as a signed integer view of the same item size and the torch dtype is restored from
the state's meta: the bytes on disk are exactly the bytes in memory.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

try:  # a dependency of zarr >= 3.1; older zarr brings none, and zlib's CRC-32 serves
    import google_crc32c
except ImportError:  # pragma: no cover - depends on the installed zarr
    google_crc32c = None

_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (as in :meth:`SessionState.meta`, e.g. ``"bfloat16"``).

    Raises
    ------
    ValueError
        If ``name`` is not a torch dtype.
    """
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype (e.g. 'float16', 'bfloat16', 'uint8')")
    return dtype


def _storage_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    try:
        torch.empty(0, dtype=dtype).numpy()
    except TypeError:
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if itemsize not in _INT_OF_SIZE:
            raise ValueError(f"cannot store tensors of dtype {dtype} (item size {itemsize})") from None
        return _INT_OF_SIZE[itemsize]
    return dtype


def storage_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype a tensor of ``dtype`` is stored as (the same, or an int view)."""
    return torch.empty(0, dtype=_storage_torch_dtype(dtype)).numpy().dtype


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy array with the tensor's exact bytes (a view when on the CPU).

    Device tensors are copied to the host once; CPU tensors that are already
    contiguous are not copied at all.
    """
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    store_as = _storage_torch_dtype(t.dtype)
    if store_as != t.dtype:
        t = t.view(store_as)
    return t.numpy()


def from_numpy(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`to_numpy`: a CPU tensor of ``dtype`` sharing ``array``'s memory."""
    if array.size == 0:  # numpy may give empty arrays zero strides, which view() rejects
        return torch.empty(array.shape, dtype=dtype)
    t = torch.from_numpy(np.require(array, requirements="C"))
    if t.dtype != dtype:
        t = t.view(dtype)
    return t


#: Name of the checksum :func:`checksum` computes (checkpoints record it): CRC-32C through
#: google-crc32c's C extension (a zarr dependency, ~6 GiB/s), else zlib's CRC-32.
CHECKSUM = "crc32c" if getattr(google_crc32c, "implementation", "") == "c" else "crc32"


def available_checksums() -> tuple[str, ...]:
    """Names of the checksums :func:`checksum` can compute here."""
    return ("crc32c", "crc32") if google_crc32c is not None else ("crc32",)


def checksum(array: np.ndarray, algorithm: str = CHECKSUM) -> int:
    """Checksum of the array's bytes (C order) with ``algorithm`` (``"crc32c"`` or ``"crc32"``).

    Raises
    ------
    ValueError
        For another algorithm name.
    """
    a = np.require(array, requirements="C")
    raw = a.reshape(-1).view(np.uint8) if a.size else np.empty(0, np.uint8)
    if algorithm == "crc32c":
        if google_crc32c is None:
            raise ValueError("checksum 'crc32c' needs the google-crc32c package (pip install google-crc32c)")
        ro = raw.view()
        ro.flags.writeable = False  # google-crc32c reads any read-only buffer without a copy
        return int(google_crc32c.value(ro))
    if algorithm == "crc32":
        return zlib.crc32(raw.data)
    raise ValueError(f"unknown checksum {algorithm!r}; known: 'crc32c', 'crc32'")
