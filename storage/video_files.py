"""Video files the way people watch them: H.264 mp4 (or VP9 WebM) through PyAV, GIF as fallback.

PyAV (``pip install av``, a dependency of turboserve) ships its own FFmpeg with libx264
and libvpx in its wheels, so no system encoder is needed. Frames are written as
``yuv420p``, the pixel format every browser's ``<video>`` decodes; odd sizes are padded
to even (4:2:0 needs them) by repeating the last row/column.

>>> import numpy as np
>>> frames = np.zeros((12, 64, 64, 3), np.uint8)
>>> data = encode_video(frames, fps=16)              # doctest: +SKIP
>>> data[4:8]                                         # doctest: +SKIP
b'ftyp'
"""

from __future__ import annotations

import io
import os
import pathlib
import tempfile
from fractions import Fraction

import numpy as np

from storage.errors import VideoStoreError

#: File suffix -> (container, codec) written by :func:`encode_video`.
FORMATS = {".mp4": ("mp4", "libx264"), ".webm": ("webm", "libvpx-vp9")}
#: MIME type of each suffix (for an HTML ``<source type=...>``).
MIME = {".mp4": "video/mp4", ".webm": "video/webm", ".gif": "image/gif"}


def _check(frames: np.ndarray, fps: float) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be non-empty uint8 of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return frames


def video_encoder_available(suffix: str = ".mp4") -> bool:
    """Whether :func:`encode_video` can write ``suffix`` here (PyAV with that codec)."""
    try:
        import av
    except ImportError:
        return False
    container, codec = FORMATS.get(suffix.lower(), (None, None))
    return codec is not None and codec in av.codecs_available


def encode_video(frames: np.ndarray, fps: float = 16.0, *, suffix: str = ".mp4", crf: int = 18) -> bytes:
    """Encode ``uint8`` frames ``(T, H, W, 3)`` as an mp4 (H.264) or WebM (VP9) file's bytes.

    ``crf`` is the constant-quality factor (lower is better; 18 is visually lossless for
    H.264). The mp4 has its index first (``faststart``), so a browser plays it while loading.

    Raises
    ------
    ValueError
        Bad frames or fps.
    VideoStoreError
        PyAV is missing or has no encoder for ``suffix``.
    """
    frames = _check(frames, fps)
    suffix = suffix.lower()
    if suffix not in FORMATS:
        raise VideoStoreError(f"cannot encode {suffix!r}: use one of {sorted(FORMATS)} (or .gif via write_video)")
    container_name, codec = FORMATS[suffix]
    try:
        import av
    except ImportError as exc:
        raise VideoStoreError(
            f"writing {suffix} needs PyAV: pip install av (it brings its own FFmpeg); or write a .gif"
        ) from exc
    if codec not in av.codecs_available:
        raise VideoStoreError(f"this PyAV build has no {codec} encoder for {suffix}; write a .gif instead")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:  # 4:2:0 chroma needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    options = {"movflags": "+faststart"} if container_name == "mp4" else {}
    rate = Fraction(fps).limit_denominator(1001)
    # faststart rewrites the file to move its index first: it needs a real file, not a buffer.
    with tempfile.TemporaryDirectory(prefix="turboserve-video-") as tmp:
        target = pathlib.Path(tmp) / f"v{suffix}"
        _mux(av, target, container_name, codec, options, rate, crf, frames)
        return target.read_bytes()


def _mux(av, target, container_name, codec, options, rate, crf, frames) -> None:  # noqa: ANN001
    with av.open(str(target), mode="w", format=container_name, options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def decode_video(data: bytes) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 of an encoded video (for tests and checks)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 16.0) -> pathlib.Path:
    """Write frames to ``path``: ``.mp4`` (H.264), ``.webm`` (VP9) or ``.gif`` by its suffix.

    Raises
    ------
    VideoStoreError
        Unknown suffix, or no encoder for it here (the message says what to install).
    """
    path = pathlib.Path(path)
    frames = _check(frames, fps)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f, mode="RGB") for f in frames]
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(20, round(1000 / fps)), loop=0)
        return path
    path.write_bytes(encode_video(frames, fps, suffix=suffix))
    return path
