"""The built-in hash text encoder: deterministic, order-aware, no weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.text import HashTextEncoder, TextEncoder


def test_same_prompt_same_embedding_regardless_of_global_seed():
    enc = HashTextEncoder(text_dim=16, text_tokens=8)
    torch.manual_seed(1)
    a = enc(["A red fox running"])
    torch.manual_seed(2)
    b = HashTextEncoder(text_dim=16, text_tokens=8)(["a red fox running"])
    assert torch.equal(a, b)  # case-insensitive, independent of torch's global generator


def test_shape_padding_and_truncation():
    enc = HashTextEncoder(text_dim=16, text_tokens=4)
    out = enc(["a fox", "one two three four five six"])
    assert out.shape == (2, 4, 16) and out.dtype == torch.float32
    assert torch.count_nonzero(out[0, 2:]) == 0  # padding positions are zero
    assert torch.count_nonzero(out[0, :2].abs().sum(-1)) == 2
    assert torch.count_nonzero(out[1].abs().sum(-1)) == 4  # truncated to text_tokens


def test_different_prompts_order_and_seeds_differ():
    enc = HashTextEncoder(text_dim=16, text_tokens=8)
    fox, snow, fox_rev = enc(["fox snow", "snow", "snow fox"])
    assert not torch.allclose(fox, snow)
    assert not torch.allclose(fox, fox_rev)
    assert not torch.allclose(fox, HashTextEncoder(16, 8, seed=1)(["fox snow"])[0])


def test_is_a_text_encoder_and_rejects_bare_strings():
    enc = HashTextEncoder(text_dim=16, text_tokens=8)
    assert isinstance(enc, TextEncoder)
    with pytest.raises(TypeError, match="sequence of prompts"):
        enc("a fox")
    with pytest.raises(ValueError, match="positive"):
        HashTextEncoder(text_dim=0, text_tokens=8)


def test_embedding_is_the_same_in_another_process(tmp_path):
    """Stable hashing (not Python's salted hash()): workers agree on every prompt."""
    path = tmp_path / "emb.pt"
    code = (
        "import sys, torch; from kernels.text import HashTextEncoder; "
        "torch.save(HashTextEncoder(16, 8)(['a red fox']), sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, cwd=Path(__file__).parents[1])
    assert torch.equal(torch.load(path), HashTextEncoder(16, 8)(["a red fox"]))
