"""Typed limits on what a session may be opened with: checked before anything reaches a worker.

:func:`validate_open` is pure (no Dask, no clock, no I/O): the client's
:meth:`framework.Server.open_session` calls it before sending the request, and the
scheduler plugin calls it again on its side (a client may be older, or not ours). A
bad value raises :class:`~framework.errors.InvalidRequest` (or
:class:`~framework.errors.UnknownModel`) with a message that names it and the allowed
range, instead of an ``OverflowError`` in the RPC layer or a worker that runs out of
memory.

The limits (``turboserve.limits.*``, see ``framework/turboserve.yaml``):

- the seed is an int in ``[0, 2**63)`` (a signed 64-bit integer, what Dask's msgpack,
  torch's generator and the trace files all carry);
- the prompt is a non-empty string of at most ``max-prompt-bytes`` UTF-8 bytes (it is
  stored in the registry, in every checkpoint and in ``server.sessions()`` replies);
- ``height`` and ``width`` are positive ints, multiples of the model's resolution step,
  and ``height * width`` is at most ``max-pixels`` (the KV cache and the activations
  grow with it; a 65536 x 65536 session would exhaust any worker);
- the model is a known preset;
- a session id, when given, is 1-64 letters, digits, ``_``, ``.`` or ``-``.

Example
-------
>>> limits = OpenLimits(max_prompt_bytes=16384, max_pixels=1280 * 720)
>>> validate_open("a red fox", 0, "tiny", 64, 64, limits=limits).model
'tiny'
>>> validate_open("a red fox", 2**70, limits=limits)
Traceback (most recent call last):
...
workers.errors.InvalidRequest: seed 1180591620717411303424 is out of range: it must be an int in [0, 2**63)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from kernels.presets import get_preset
from workers.errors import InvalidRequest, UnknownModel

#: Seeds are ints in ``[0, SEED_LIMIT)``.
SEED_LIMIT = 2**63
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class OpenLimits:
    """The limits :func:`validate_open` applies (``turboserve.limits.*``).

    Both are required: the defaults live in ``framework/turboserve.yaml`` only
    (:meth:`from_config` reads them).

    Attributes
    ----------
    max_prompt_bytes : int
        Most UTF-8 bytes of a prompt.
    max_pixels : int
        Most ``height * width`` of a session.
    """

    max_prompt_bytes: int
    max_pixels: int

    def __post_init__(self) -> None:
        for name in ("max_prompt_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name.replace('_', '-')} must be an int >= 1, got {value!r}")

    @classmethod
    def from_config(cls, **overrides: Any) -> OpenLimits:
        """Read ``turboserve.limits.*``; non-None ``overrides`` win."""
        from framework import config

        values = {
            "max_prompt_bytes": config.get("limits.max-prompt-bytes"),
            "max_pixels": config.get("limits.max-pixels"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """A validated request to open a session (``None``: the server's default, unchecked here)."""

    prompt: str
    seed: int
    model: str | None
    height: int | None
    width: int | None
    session_id: str | None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_open(
    prompt: Any,
    seed: Any = 0,
    model: Any = None,
    height: Any = None,
    width: Any = None,
    session_id: Any = None,
    *,
    limits: OpenLimits | None = None,
) -> OpenRequest:
    """Check the arguments of an ``open_session`` against the limits; return them validated.

    Parameters
    ----------
    prompt, seed, model, height, width, session_id
        As given to :meth:`framework.Server.open_session`. ``None`` for ``model``,
        ``height``, ``width`` means the server's default: the caller that knows the
        default (the scheduler) passes it resolved so that it is checked too.
    limits : OpenLimits, optional
        Default: :meth:`OpenLimits.from_config`.

    Returns
    -------
    OpenRequest
        The same values, ``model`` as the preset's canonical name.

    Raises
    ------
    InvalidRequest
        A value out of range (the message names it and the allowed range).
    UnknownModel
        ``model`` is not a preset.
    """
    limits = OpenLimits.from_config() if limits is None else limits
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest(f"prompt must be a non-empty string, got {_short(prompt)}")
    try:
        size = len(prompt.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest("prompt is not valid text: it holds lone surrogate characters") from None
    if size > limits.max_prompt_bytes:
        raise InvalidRequest(
            f"prompt is {size} bytes (UTF-8); at most {limits.max_prompt_bytes} are allowed "
            "(turboserve.limits.max-prompt-bytes)"
        )
    if not _is_int(seed):
        raise InvalidRequest(f"seed must be an int in [0, 2**63), got {_short(seed)}")
    if not 0 <= seed < SEED_LIMIT:
        raise InvalidRequest(f"seed {seed} is out of range: it must be an int in [0, 2**63)")
    preset = None
    if model is not None:
        if not isinstance(model, str):
            raise UnknownModel(f"model must be a preset name (str), got {_short(model)}")
        try:
            preset = get_preset(model)
        except ValueError as exc:
            raise UnknownModel(str(exc)) from None
    for label, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if not _is_int(value) or value <= 0:
            raise InvalidRequest(f"{label}={_short(value)} is not allowed: it must be a positive int")
        if value > limits.max_pixels:
            raise InvalidRequest(
                f"{label}={value} is not allowed: a session has at most {limits.max_pixels} pixels "
                "(turboserve.limits.max-pixels)"
            )
    if height is not None and width is not None and height * width > limits.max_pixels:
        raise InvalidRequest(
            f"a {height}x{width} session has {height * width} pixels; at most {limits.max_pixels} are "
            "allowed (turboserve.limits.max-pixels), e.g. 720x1280"
        )
    if preset is not None:
        try:
            preset.check_resolution(height or preset.resolution_multiple, width or preset.resolution_multiple)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    if session_id is not None and not (isinstance(session_id, str) and _SESSION_ID.match(session_id)):
        raise InvalidRequest(
            f"session id {_short(session_id)} is not allowed: use 1-64 letters, digits, '_', '.' or '-'"
        )
    return OpenRequest(prompt, seed, None if preset is None else preset.name, height, width, session_id)


# ------------------------------------------------------------ memory

#: Positions of the transformer's rotary-embedding table (a buffer every worker holds).
ROPE_POSITIONS = 1024
GIB = 2**30


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """What one session of a model at a resolution needs on a worker, in bytes (estimates from the preset).

    Attributes
    ----------
    weights : int
        The model's transformer and VAE weights (held once per worker and model).
    state : int
        The session's state with a full KV window (KV cache, VAE cache, prompt, RNG).
    activations : int
        The transient tensors of one of its steps (one layer's hidden states, one
        head's attention scores in fp32, the VAE decoder's widest full-resolution
        feature map, three times).
    """

    weights: int
    state: int
    activations: int

    @property
    def per_session(self) -> int:
        """State and activations: what each session adds."""
        return self.state + self.activations


def weights_bytes(preset: Any) -> int:
    """Bytes of a preset's transformer and VAE weights, estimated from its shape (no torch).

    The transformer is counted exactly for the Wan2.1 layout of
    :func:`kernels.networks.build_transformer` (within its rotary table); the VAE as two
    3x3x3 convolutions per decoder cache entry, twice (encoder and decoder), which
    over-counts it by about a fifth: the estimate is never below the real size
    (``tests/test_memory_admission.py`` checks every preset against the built model).

    >>> from kernels.presets import get_preset
    >>> round(weights_bytes(get_preset("wan-1.3b")) / 2**30, 2)
    2.93
    """
    p = get_preset(preset)
    d, f, patch = p.dim, p.ffn_dim, p.latent_channels * math.prod(p.patch_size)
    block = 8 * d * d + 2 * d * f + 21 * d + f  # self and cross attention, norms, FFN, modulation
    embed = (patch * d + d) + (p.freq_dim * d + d) + (d * d + d) + (6 * d * d + 6 * d) \
        + (p.text_dim * d + d) + (d * d + d) + (d * patch + patch) + 2 * d
    rope = 2 * ROPE_POSITIONS * p.head_dim
    vae = 2 * 27 * sum(c * c for c, *_ in p.vae.decoder_cache_shapes(8, 8))
    return (p.num_layers * block + embed + rope + vae) * p.dtype_bytes


def activation_bytes(preset: Any, height: int, width: int) -> int:
    """Bytes of the transient tensors of one step of one session (an estimate, see :class:`MemoryNeed`)."""
    p = get_preset(preset)
    per_frame = p.tokens_per_latent_frame(height, width)
    chunk = p.chunk_latent_frames * per_frame
    window = p.window_latent_frames * per_frame + chunk
    layer = chunk * (4 * p.dim + p.ffn_dim) * p.dtype_bytes
    scores = chunk * window * 4
    decoder = 3 * p.frames_per_chunk * height * width * p.vae.base_dim * p.vae.dim_mult[0] * p.dtype_bytes
    return layer + scores + decoder


def session_memory(preset: Any, height: int | None = None, width: int | None = None) -> MemoryNeed:
    """The :class:`MemoryNeed` of one session (``height``/``width`` None: the preset's default).

    >>> need = session_memory("wan-1.3b")
    >>> round(need.state / 2**30, 1), need.per_session > need.state
    (7.4, True)
    """
    p = get_preset(preset)
    height, width = height or p.default_height, width or p.default_width
    return MemoryNeed(weights_bytes(p), p.state_bytes(height, width), activation_bytes(p, height, width))


@dataclass(frozen=True, slots=True)
class MemoryFit:
    """Whether a session fits a worker: ``needed`` against ``available`` bytes (see :func:`memory_fit`)."""

    needed: int
    available: int

    @property
    def fits(self) -> bool:
        return self.needed <= self.available


def memory_fit(need: MemoryNeed, memory_limit: int, *, held: int = 0, weights_loaded: bool = False,
               reserve: int = GIB) -> MemoryFit:
    """Does one more session of ``need`` fit a worker whose memory limit is ``memory_limit`` bytes?

    ``needed`` is the session's state and activations, plus the model's weights unless
    the worker holds them already (``weights_loaded``); ``available`` is the limit less
    ``reserve`` (the worker process itself: Python, torch, Dask, buffers) and less
    ``held``, what the worker's sessions (and other models' weights) take already.
    Pure: no Dask, no torch, no clock.

    >>> need = MemoryNeed(weights=3 * GIB, state=7 * GIB, activations=GIB)
    >>> memory_fit(need, 4 * GIB)
    MemoryFit(needed=11811160064, available=3221225472)
    >>> memory_fit(need, 64 * GIB, held=20 * GIB, weights_loaded=True).fits
    True
    """
    needed = need.per_session + (0 if weights_loaded else need.weights)
    return MemoryFit(needed, max(0, memory_limit - reserve - held))


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 else f"{n / 2**20:.2f} MiB"


def insufficient_memory_message(model: str, height: int, width: int, need: MemoryNeed, fit: MemoryFit,
                                where: str, device: bool = False) -> str:
    """The message of an :class:`~framework.errors.InsufficientMemory`: what was needed, what was free, what to do.

    ``device``: ``where`` is a worker's CUDA device (its measured free memory), not its memory limit.
    """
    if device:
        free = ("free on its CUDA device (measured once its model loaded, less "
                "turboserve.admission.device-memory-reserve); use a smaller resolution or model, workers with "
                "larger GPUs, or close sessions there")
    else:
        free = ("free under its memory limit; use a smaller resolution or model, workers with more memory "
                "(memory_limit), or close sessions there")
    return (
        f"a {model} session at {height}x{width} needs {_gib(fit.needed)} (weights {_gib(need.weights)}, "
        f"state {_gib(need.state)}, activations {_gib(need.activations)}) but {where} has {_gib(fit.available)} "
        f"{free}"
    )


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 64 MB prompt is not echoed back)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({type(value).__name__} of {len(text)} chars)"


__all__ = [
    "SEED_LIMIT",
    "MemoryFit",
    "MemoryNeed",
    "OpenLimits",
    "OpenRequest",
    "activation_bytes",
    "insufficient_memory_message",
    "memory_fit",
    "session_memory",
    "validate_open",
    "weights_bytes",
]
