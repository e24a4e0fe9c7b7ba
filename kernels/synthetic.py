"""Synthetic videos made by code: a square of the prompt's colour moving in the prompt's direction.

The training set of the ``tiny-trained`` checkpoint (:mod:`kernels.train`) and the
measures its tests use. A clip is fully defined by ``(colour, direction, start)``: a
``SQUARE``-pixel square on a black background moves ``SPEED`` pixels per frame and wraps
around the edges, so a stream of any length stays in the picture. The training clips
all start at :func:`start_of` (near the centre, on the VAE's 8-pixel grid): the prompt
then defines the video, which a model this small learns in minutes.

>>> prompt_for("red", "left")
'a red square moving left'
>>> parse_prompt("a Blue square moving up")
('blue', 'up')
>>> clip = render_clip("red", "left", frames=12, size=64, start=start_of(64))
>>> clip.shape, dominant_colour(clip)
((12, 64, 64, 3), 'red')
>>> motion_direction(clip)
'left'
"""

from __future__ import annotations

import re

import numpy as np

#: Colour name -> RGB in ``[0, 1]``.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
#: Direction name -> unit step ``(dy, dx)`` in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
#: Side of the square in pixels, and its speed in pixels per frame.
SQUARE = 24
SPEED = 2

_PROMPT = re.compile(r"^\s*an?\s+(\w+)\s+square\s+moving\s+(\w+)\s*$", re.IGNORECASE)


def prompt_for(colour: str, direction: str) -> str:
    """The training prompt of a colour and a direction."""
    if colour not in COLOURS or direction not in DIRECTIONS:
        raise ValueError(
            f"unknown colour {colour!r} or direction {direction!r}; "
            f"colours: {sorted(COLOURS)}, directions: {sorted(DIRECTIONS)}"
        )
    return f"a {colour} square moving {direction}"


def start_of(size: int) -> tuple[int, int]:
    """Top-left ``(y, x)`` of the square at frame 0 in a ``size``-pixel clip (grid-aligned, central)."""
    y = (size - SQUARE) // 2 // 8 * 8
    return y, y


def parse_prompt(prompt: str) -> tuple[str, str]:
    """``(colour, direction)`` of a prompt in the training form, else ``ValueError``."""
    m = _PROMPT.match(prompt)
    if not m or m.group(1).lower() not in COLOURS or m.group(2).lower() not in DIRECTIONS:
        raise ValueError(
            f"{prompt!r} is not of the form 'a <colour> square moving <direction>' with a colour "
            f"in {sorted(COLOURS)} and a direction in {sorted(DIRECTIONS)}"
        )
    return m.group(1).lower(), m.group(2).lower()


def render_clip(
    colour: str, direction: str, *, frames: int, size: int, start: tuple[int, int], first_frame: int = 0
) -> np.ndarray:
    """Frames ``[frames, size, size, 3]`` (float32 in ``[0, 1]``) of one clip.

    ``start`` is the square's top-left ``(y, x)`` at frame 0; ``first_frame`` skips
    that many frames (a later chunk of the same clip).
    """
    rgb = np.asarray(COLOURS[colour], dtype=np.float32)
    dy, dx = DIRECTIONS[direction]
    out = np.zeros((frames, size, size, 3), dtype=np.float32)
    idx = np.arange(SQUARE)
    for f in range(frames):
        t = first_frame + f
        y0 = (start[0] + dy * SPEED * t) % size
        x0 = (start[1] + dx * SPEED * t) % size
        ys, xs = (y0 + idx) % size, (x0 + idx) % size
        out[f][np.ix_(ys, xs)] = rgb
    return out


def dominant_colour(frames: np.ndarray) -> str:
    """The colour of :data:`COLOURS` nearest to the mean of the bright pixels.

    ``frames``: ``[..., 3]`` uint8 (0-255) or float in ``[0, 1]``. Bright pixels are
    those whose largest channel is over half of full scale; with none, ``"black"``.
    """
    x = np.asarray(frames, dtype=np.float32)
    if np.issubdtype(np.asarray(frames).dtype, np.integer):
        x = x / 255.0
    pixels = x.reshape(-1, 3)
    bright = pixels[pixels.max(axis=1) > 0.5]
    if len(bright) == 0:
        return "black"
    mean = bright.mean(axis=0)
    names = list(COLOURS)
    dist = [float(np.sum((mean - np.asarray(COLOURS[n])) ** 2)) for n in names]
    return names[int(np.argmin(dist))]


def _centroid(frame: np.ndarray) -> np.ndarray:
    """Circular centroid ``(y, x)`` angles of a frame's brightness (the square wraps)."""
    w = frame.max(axis=-1).astype(np.float64)
    size = w.shape[0]
    ang = 2 * np.pi * np.arange(size) / size
    wy, wx = w.sum(axis=1), w.sum(axis=0)
    cy = np.angle(np.sum(wy * np.exp(1j * ang)))
    cx = np.angle(np.sum(wx * np.exp(1j * ang)))
    return np.array([cy, cx])


def motion_direction(frames: np.ndarray) -> str:
    """The direction the bright content moves in over ``frames`` ``[T, H, W, 3]``.

    Sums the wrapped frame-to-frame shift of the brightness centroid and names the
    larger axis's sign; ``"still"`` when it moved less than a pixel in all.
    """
    x = np.asarray(frames, dtype=np.float32)
    size = x.shape[1]
    total = np.zeros(2)
    for a, b in zip(x[:-1], x[1:]):
        d = _centroid(b) - _centroid(a)
        total += (d + np.pi) % (2 * np.pi) - np.pi
    total *= size / (2 * np.pi)
    if np.abs(total).max() < 1.0:
        return "still"
    if abs(total[0]) > abs(total[1]):
        return "down" if total[0] > 0 else "up"
    return "right" if total[1] > 0 else "left"
