"""Typed limits on open_session: every bad input is an InvalidRequest/UnknownModel that names it.

The pure checks of :func:`framework.limits.validate_open` first (milliseconds), then the
same inputs through a real ``Server.local`` (one CPU worker): refused on the client
before anything reaches a worker, and the server keeps serving.
"""

from __future__ import annotations

import dask.config
import pytest

import framework.config  # noqa: F401 - registers the turboserve defaults before any dask.config.set below

from framework.errors import InvalidRequest, TurboserveError, UnknownModel
from framework.limits import SEED_LIMIT, OpenLimits, validate_open

LIMITS = OpenLimits(max_prompt_bytes=1024, max_pixels=1280 * 720)

# (kwargs, error type, phrase the message must contain)
BAD = [
    ({"seed": 2**70}, InvalidRequest, "seed 1180591620717411303424 is out of range"),
    ({"seed": 2**63}, InvalidRequest, "[0, 2**63)"),
    ({"seed": -1}, InvalidRequest, "seed -1 is out of range"),
    ({"seed": 1.5}, InvalidRequest, "seed must be an int"),
    ({"seed": True}, InvalidRequest, "seed must be an int"),
    ({"seed": "7"}, InvalidRequest, "seed must be an int"),
    ({"prompt": ""}, InvalidRequest, "prompt must be a non-empty string"),
    ({"prompt": "   "}, InvalidRequest, "prompt must be a non-empty string"),
    ({"prompt": None}, InvalidRequest, "prompt must be a non-empty string"),
    ({"prompt": b"bytes"}, InvalidRequest, "prompt must be a non-empty string"),
    ({"prompt": "x" * 1025}, InvalidRequest, "prompt is 1025 bytes (UTF-8); at most 1024"),
    ({"prompt": "é" * 513}, InvalidRequest, "prompt is 1026 bytes"),
    ({"prompt": "a\ud800b"}, InvalidRequest, "lone surrogate"),
    ({"height": 65536, "width": 65536}, InvalidRequest, "65536x65536 session has 4294967296 pixels"),
    ({"height": 2048, "width": 2048}, InvalidRequest, "at most 921600"),
    ({"height": 10**12}, InvalidRequest, "height=1000000000000 is not allowed"),
    ({"height": 0}, InvalidRequest, "height=0 is not allowed: it must be a positive int"),
    ({"width": -64}, InvalidRequest, "width=-64"),
    ({"width": 64.0}, InvalidRequest, "width=64.0"),
    ({"model": "tiny", "height": 50}, InvalidRequest, "height=50 is not allowed for model 'tiny'"),
    ({"model": "wan-99b"}, UnknownModel, "unknown model preset 'wan-99b'"),
    ({"model": 3}, UnknownModel, "model must be a preset name"),
    ({"session_id": "a/b"}, InvalidRequest, "session id 'a/b' is not allowed"),
    ({"session_id": "x" * 65}, InvalidRequest, "is not allowed: use 1-64"),
]


@pytest.mark.parametrize(("kwargs", "error", "phrase"), BAD, ids=[repr(b[0])[:40] for b in BAD])
def test_each_bad_input_is_a_typed_error_naming_it(kwargs, error, phrase) -> None:
    args = {"prompt": "a red fox", "seed": 0, **kwargs}
    with pytest.raises(error) as err:
        validate_open(**args, limits=LIMITS)
    assert phrase in str(err.value)
    assert isinstance(err.value, TurboserveError) and isinstance(err.value, ValueError)


def test_a_huge_prompt_is_not_echoed_back() -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_open(["x"] * 100000, limits=LIMITS)  # a non-str prompt, repr of 500 kB
    with pytest.raises(InvalidRequest, match="prompt is 67108864 bytes"):
        validate_open("x" * 2**26, limits=LIMITS)  # the 64 MB prompt of the issue
    assert len(str(err.value)) < 200


def test_good_inputs_come_back_validated() -> None:
    req = validate_open("a red fox", SEED_LIMIT - 1, "tiny", 720, 1280, "s-1.a_b", limits=LIMITS)
    assert (req.prompt, req.seed, req.model, req.height, req.width, req.session_id) == (
        "a red fox", SEED_LIMIT - 1, "tiny", 720, 1280, "s-1.a_b",
    )
    assert validate_open("x" * 1024, limits=LIMITS).model is None  # defaults are the server's to check


def test_limits_come_from_the_config_and_are_checked() -> None:
    with dask.config.set({"turboserve.limits.max-prompt-bytes": 8, "turboserve.limits.max-pixels": 100}):
        limits = OpenLimits.from_config()
        assert limits == OpenLimits(8, 100)
        with pytest.raises(InvalidRequest, match="prompt is 9 bytes"):
            validate_open("123456789")
        with pytest.raises(InvalidRequest, match="at most 100"):
            validate_open("ok", height=16, width=16)
    assert OpenLimits.from_config() == OpenLimits(16384, 921600)  # the documented defaults
    with pytest.raises(ValueError, match="limits.max-pixels must be an int >= 1"):
        OpenLimits(max_prompt_bytes=16384, max_pixels=0)


def test_the_server_refuses_them_before_any_worker_and_keeps_serving() -> None:
    from framework import Server

    config = {"turboserve.limits.max-prompt-bytes": LIMITS.max_prompt_bytes}
    with dask.config.set(config), Server.local(n_workers=1, model="tiny", dashboard_address=None) as server:
        worker = server.workers()[0]
        for kwargs, error, phrase in BAD:
            args = {"prompt": "a red fox", "seed": 0, **kwargs}
            with pytest.raises(error) as err:
                server.open_session(args.pop("prompt"), **args)
            assert phrase in str(err.value)
        # A client that is not ours (the scheduler's RPC, no client-side check) meets the same limits.
        for kwargs, error, phrase in BAD:
            args = {"prompt": "a red fox", "seed": 0, **kwargs}
            try:
                server.client.sync(server.client.scheduler.turboserve_open, **args)
            except (OverflowError, UnicodeEncodeError):
                continue  # msgpack cannot even carry it to the scheduler
            except error as exc:
                assert phrase in str(exc)
                continue
            pytest.fail(f"the scheduler accepted {kwargs}")
        assert server.sessions(include_closed=True) == []  # none reached the scheduler's registry
        assert server.workers() == [worker]  # and the worker is the same one, alive
        s = server.open_session("a red fox", seed=SEED_LIMIT - 1)
        assert [c.index for c in s.stream(1)] == [0]
        s.close()
