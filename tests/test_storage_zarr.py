"""The direct chunk writer/reader produce and read ordinary zarr arrays, exactly."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.zarr_store import ChunkError, chunk_shape, open_root, open_store, read_array, write_arrays

SHAPES = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, itemsize=st.sampled_from([1, 2, 8]), target=st.integers(1, 600))
def test_chunks_fit_the_target_and_split_only_leading_axes(shape, itemsize, target) -> None:
    chunks = chunk_shape(shape, itemsize, target)
    assert len(chunks) == len(shape) and all(c >= 1 for c in chunks)
    assert all(c <= max(1, n) for c, n in zip(chunks, shape))
    # Within the target, unless a single element (or the innermost row) is already larger.
    assert math.prod(chunks) * itemsize <= max(target, itemsize)
    split = [i for i, (c, n) in enumerate(zip(chunks, shape)) if c < max(1, n)]
    if split:  # one axis is cut; every axis after it is whole, every axis before it is 1,
        last = split[-1]  # so each chunk is one contiguous run of the C-ordered data
        assert all(c == max(1, n) for c, n in zip(chunks[last + 1 :], shape[last + 1 :]))
        assert all(c == 1 for c in chunks[:last])


def new_array(group: zarr.Group, name: str, data: np.ndarray, chunks: tuple[int, ...]) -> zarr.Array:
    return group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        compressors=None,
        filters=None,
        fill_value=0,
        config={"write_empty_chunks": True},
    )


@settings(max_examples=30, deadline=None)
@given(
    shape=SHAPES, dtype=st.sampled_from(["uint8", "int16", "float32", "int64"]), target=st.sampled_from([3, 40, 10_000])
)
def test_direct_writes_read_back_through_plain_zarr_and_vice_versa(tmp_path_factory, shape, dtype, target) -> None:
    rng = np.random.default_rng(len(shape) * 31 + target)
    data = rng.integers(0, 100, size=shape).astype(dtype)
    root = open_root(open_store(tmp_path_factory.mktemp("z")))
    chunks = chunk_shape(shape, data.itemsize, target)
    direct = new_array(root, "direct", data, chunks)
    write_arrays([(direct, data)])
    np.testing.assert_array_equal(root["direct"][...], data)  # zarr's own reader
    plain = new_array(root, "plain", data, chunks)
    plain[...] = data  # zarr's own writer
    np.testing.assert_array_equal(read_array(plain, missing_chunks="error"), data)


def test_side_jobs_run_alongside_and_return_in_order(tmp_path: pathlib.Path) -> None:
    root = open_root(open_store(tmp_path))
    data = np.arange(10, dtype=np.int32)
    assert write_arrays([(new_array(root, "a", data, (4,)), data)], [lambda: 1, lambda: 2]) == [1, 2]


def test_compressed_arrays_take_zarrs_own_path(tmp_path: pathlib.Path) -> None:
    root = open_root(open_store(tmp_path))
    data = np.arange(1000, dtype=np.int64).reshape(10, 100)
    array = root.create_array(
        "c", shape=data.shape, dtype=data.dtype, chunks=(3, 100), compressors=[zarr.codecs.ZstdCodec()]
    )
    write_arrays([(array, data)])
    np.testing.assert_array_equal(read_array(array), data)


def test_missing_chunk_is_filled_or_refused(tmp_path: pathlib.Path) -> None:
    root = open_root(open_store(tmp_path))
    data = np.arange(1, 9, dtype=np.int16)
    array = new_array(root, "m", data, (4,))
    write_arrays([(array, data)])
    (tmp_path / "m" / "c" / "1").unlink()
    np.testing.assert_array_equal(read_array(array), [1, 2, 3, 4, 0, 0, 0, 0])
    with pytest.raises(ChunkError, match="'m/c/1' is missing"):
        read_array(array, missing_chunks="error")
