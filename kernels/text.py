"""Text encoders: turn prompts into the ``[text_tokens, text_dim]`` embedding a session keeps.

Any callable ``encode(prompts: Sequence[str]) -> Tensor[len(prompts), tokens, dim]`` can
serve as the model's text encoder (for real weights: a UMT5-XXL wrapper as in diffusers'
``WanPipeline._get_t5_prompt_embeds``). :class:`HashTextEncoder` is the built-in one for
random-weight presets: deterministic, no download, no weights.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

_WORD = re.compile(r"\w+|[^\w\s]")


@runtime_checkable
class TextEncoder(Protocol):
    """What the model needs from a text encoder."""

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[len(prompts), text_tokens, text_dim]`` (float)."""
        ...


class HashTextEncoder:
    """Deterministic prompt embeddings from hashed words (no weights, no hub).

    Each word (lower-cased) gets a vector drawn from a generator seeded by a stable
    hash of ``(seed, word)``; position ``i`` adds a small seeded offset so word order
    matters. Positions past the prompt's length are zero, as in Wan's padded T5 output.
    The same prompt gives the same embedding in every process.

    Parameters
    ----------
    text_dim
        Width of each token embedding.
    text_tokens
        Sequence length (longer prompts are truncated).
    seed
        Selects the embedding "vocabulary".

    Examples
    --------
    >>> enc = HashTextEncoder(text_dim=16, text_tokens=8)
    >>> enc(["a red fox"]).shape
    torch.Size([1, 8, 16])
    """

    def __init__(self, text_dim: int, text_tokens: int, seed: int = 0) -> None:
        if text_dim <= 0 or text_tokens <= 0:
            raise ValueError(f"text_dim and text_tokens must be positive, got {text_dim}, {text_tokens}")
        self.text_dim = text_dim
        self.text_tokens = text_tokens
        self.seed = seed

    def _vector(self, key: str) -> torch.Tensor:
        digest = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        return torch.randn(self.text_dim, generator=gen)

    def encode_one(self, prompt: str) -> torch.Tensor:
        """Embedding ``[text_tokens, text_dim]`` of one prompt (float32, CPU)."""
        out = torch.zeros(self.text_tokens, self.text_dim)
        words = _WORD.findall(prompt.lower())[: self.text_tokens]
        for i, word in enumerate(words):
            out[i] = self._vector("w:" + word) + 0.1 * self._vector(f"p:{i}")
        return out

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[len(prompts), text_tokens, text_dim]`` (float32, CPU)."""
        if isinstance(prompts, str):
            raise TypeError("pass a sequence of prompts, e.g. [prompt], not a single string")
        return torch.stack([self.encode_one(p) for p in prompts])

    def __repr__(self) -> str:
        return f"HashTextEncoder(text_dim={self.text_dim}, text_tokens={self.text_tokens}, seed={self.seed})"
