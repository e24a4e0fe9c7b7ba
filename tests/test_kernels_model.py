"""StreamingVideoModel: sessions, the batched chunk step, determinism, bounded state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import SessionState, StreamingVideoModel, get_preset
from kernels.presets import RNG_STATE_BYTES

SMALL = 32  # 32x32 pixels: 4 tokens per latent frame, keeps the step cheap


@pytest.fixture(scope="module")
def model():
    return StreamingVideoModel.from_preset("tiny", num_threads=1)


def _advance(model, state, n):
    return [model.step([state])[0] for _ in range(n)]


def test_frames_shape_dtype_and_state_bookkeeping(model):
    s = model.new_session("a red fox running through snow", seed=0)
    assert (s.model, s.height, s.width, s.chunk_index) == ("tiny", 64, 64, 0)
    assert s.tensors["prompt_embeds"].shape == (16, 16)
    assert s.tensors["rng"].dtype == torch.uint8
    (frames,) = model.step([s])
    assert isinstance(frames, np.ndarray)
    assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 0  # not a constant image
    assert s.chunk_index == 1 and s.scalars["kv.frames"] == 3
    assert s.tensors["kv.1.k"].shape == (2, 3 * 16, 12)


def test_resolution_is_validated_with_allowed_values(model):
    with pytest.raises(ValueError, match=r"height=40 .* multiple of 16"):
        model.new_session("x", seed=0, height=40, width=64)
    s = model.new_session("x", seed=0, height=48, width=SMALL)
    assert model.step([s])[0].shape == (12, 48, SMALL, 3)


def test_step_rejects_mixed_batches(model):
    a = model.new_session("a", seed=0)
    with pytest.raises(ValueError, match="share the resolution"):
        model.step([a, model.new_session("b", seed=1, height=SMALL, width=SMALL)])
    with pytest.raises(ValueError, match="appears twice"):
        model.step([a, a])
    alien = model.new_session("c", seed=2)
    alien.model = "wan-1.3b"
    with pytest.raises(ValueError, match="for model 'wan-1.3b'"):
        model.step([a, alien])
    assert a.chunk_index == 0  # a refused batch changes nothing
    assert model.step([]) == []


def test_batched_step_equals_separate_steps(model):
    """Sessions at different chunk indices (cache lengths), prompts and seeds."""
    specs = [("a red fox", 0, 0), ("waves at dusk", 5, 4), ("a red fox", 1, 2), ("city lights", 9, 4)]
    alone, batched = [], []
    for prompt, seed, warm in specs:
        a, b = model.new_session(prompt, seed), model.new_session(prompt, seed)
        _advance(model, a, warm)
        _advance(model, b, warm)
        alone.append(a)
        batched.append(b)
    together = model.step(batched)
    for a, b, frames in zip(alone, batched, together):
        (single,) = model.step([a])
        # Batch-invariant (the default): bit for bit, frames and every state tensor.
        assert np.array_equal(single, frames)
        assert a.meta() == b.meta()
        for name in a.tensors:
            assert torch.equal(a.tensors[name], b.tensors[name]), name
    # Different seeds and prompts give different videos.
    assert not np.array_equal(together[0], together[2])


def test_batched_step_is_deterministic(model):
    def run():
        states = [model.new_session(p, seed=i) for i, p in enumerate(["fox", "sea", "sky"])]
        model.step(states[:1])
        return model.step(states)

    for x, y in zip(run(), run()):
        assert np.array_equal(x, y)


def test_state_copied_out_and_back_continues_bit_identically(model):
    original = model.new_session("a red fox", seed=3, height=SMALL, width=SMALL)
    _advance(model, original, 3)
    copy = original.to("cpu")
    restored = SessionState.from_meta(copy.meta(), {k: v.clone() for k, v in copy.tensors.items()})
    assert restored.equal(original)
    expected = _advance(model, original, 2)
    got = _advance(model, restored, 2)
    for x, y in zip(expected, got):
        assert np.array_equal(x, y)
    assert restored.equal(original)


def test_chunk_depends_only_on_model_prompt_and_seed():
    m1 = StreamingVideoModel.from_preset("tiny", weights_seed=0, num_threads=1)
    torch.manual_seed(123)  # the global generator plays no part
    m2 = StreamingVideoModel.from_preset("tiny", weights_seed=0, num_threads=1)
    rng_before = torch.get_rng_state()
    a = _advance(m1, m1.new_session("fox", seed=1, height=SMALL, width=SMALL), 2)
    b = _advance(m2, m2.new_session("fox", seed=1, height=SMALL, width=SMALL), 2)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    m3 = StreamingVideoModel.from_preset("tiny", weights_seed=1, num_threads=1)
    c = _advance(m3, m3.new_session("fox", seed=1, height=SMALL, width=SMALL), 1)
    assert not np.array_equal(a[0], c[0])


def test_kv_cache_stays_bounded_with_sink_over_100_chunks(model):
    p = model.preset
    tpf = p.tokens_per_latent_frame(16, 16)
    s = model.new_session("a long stream", seed=0, height=16, width=16)
    model.step([s])
    sink_k = s.tensors["kv.0.k"][:, : p.sink_latent_frames * tpf].clone()
    sizes = []
    for _ in range(99):
        model.step([s])
        sizes.append(s.nbytes)
    assert s.chunk_index == 100
    window_tokens = p.window_latent_frames * tpf
    assert s.tensors["kv.0.k"].shape[1] == window_tokens and s.scalars["kv.frames"] == p.window_latent_frames
    full_from = p.window_latent_frames // p.chunk_latent_frames - 1  # step index where the window fills
    assert len(set(sizes[full_from:])) == 1 and max(sizes) == sizes[-1]
    assert s.nbytes == model.state_bytes(16, 16)
    # The sink (chunk 0's keys) survives the rolling window.
    assert torch.equal(s.tensors["kv.0.k"][:, : p.sink_latent_frames * tpf], sink_k)


def test_weights_bytes_and_repr(model):
    params = sum(p.numel() for p in model.transformer.parameters()) + sum(p.numel() for p in model.vae.parameters())
    assert params * 4 <= model.weights_bytes < params * 4 + 2**20  # fp32 weights (+ small buffers)
    assert repr(model) == "StreamingVideoModel(preset='tiny', device='cpu', dtype=torch.float32, batch_invariant=True)"


def test_state_bytes_follow_the_model_dtype():
    m = StreamingVideoModel.from_preset("tiny", dtype=torch.bfloat16, num_threads=1)
    assert m.preset.dtype_bytes == 2
    assert 2 * m.state_bytes(64, 64) - RNG_STATE_BYTES == StreamingVideoModel.from_preset("tiny").state_bytes(64, 64)
    s = m.new_session("fox", seed=0, height=SMALL, width=SMALL)
    (frames,) = m.step([s])
    assert frames.shape == (12, SMALL, SMALL, 3)
    assert s.tensors["kv.0.k"].dtype == torch.bfloat16


def test_save_and_from_pretrained_round_trip(model, tmp_path):
    path = model.save_pretrained(tmp_path / "tiny-model")
    assert (path / "transformer" / "config.json").is_file() and (path / "vae" / "config.json").is_file()
    loaded = StreamingVideoModel.from_pretrained(path, num_threads=1)
    assert loaded.preset == model.preset
    a = model.new_session("fox", seed=4, height=SMALL, width=SMALL)
    b = loaded.new_session("fox", seed=4, height=SMALL, width=SMALL)
    assert a.equal(b)
    for x, y in zip(_advance(model, a, 2), _advance(loaded, b, 2)):
        assert np.array_equal(x, y)


def test_from_pretrained_infers_the_preset_of_a_plain_diffusers_folder(model, tmp_path):
    path = model.save_pretrained(tmp_path / "plain")
    (path / "turboserve_model.json").unlink()
    loaded = StreamingVideoModel.from_pretrained(path)
    assert loaded.preset == get_preset("tiny")


def test_text_encoder_is_pluggable():
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return torch.ones(len(prompts), 16, 16)

    m = StreamingVideoModel.from_preset("tiny", num_threads=1)
    m.text_encoder = encode
    s = m.new_session("anything", seed=0)
    assert calls == [["anything"]] and torch.equal(s.tensors["prompt_embeds"], torch.ones(16, 16))
    m.text_encoder = lambda prompts: torch.ones(len(prompts), 4, 16)
    with pytest.raises(ValueError, match=r"returned shape \(1, 4, 16\); the model needs \(1, 16, 16\)"):
        m.new_session("anything", seed=0)


@pytest.mark.gpu
def test_cuda_step_and_state_round_trip_through_host():
    model = StreamingVideoModel.from_preset("tiny", device="cuda")
    s = model.new_session("a red fox", seed=0, height=SMALL, width=SMALL)
    assert s.device.type == "cuda"
    model.step([s])
    host = s.to("cpu", pin_memory=True)
    back = SessionState.from_meta(host.meta(), host.tensors).to("cuda")
    for x, y in zip(_advance(model, s, 2), _advance(model, back, 2)):
        assert np.array_equal(x, y)
    assert back.equal(s)


def test_denoise_steps_override(model):
    """The quality valve: k steps per chunk, deterministic for a given k; the stream goes on."""
    steps = model.preset.denoise_steps
    runs = {}
    for k in (None, steps, 2, 2, 1):
        s = model.new_session("a red fox", seed=3, height=SMALL, width=SMALL)
        model.step([s])
        frames = model.step([s], denoise_steps=k)[0]
        assert s.chunk_index == 2 and s.scalars["kv.frames"] == 6
        after = model.step([s])[0]  # the stream goes on with the default schedule
        runs.setdefault(k, []).append((frames, after, s.tensors["kv.0.k"].clone()))
    assert np.array_equal(runs[None][0][0], runs[steps][0][0])
    assert np.array_equal(runs[None][0][1], runs[steps][0][1])
    (a, a_next, a_kv), (b, b_next, b_kv) = runs[2]
    assert np.array_equal(a, b) and np.array_equal(a_next, b_next) and torch.equal(a_kv, b_kv)
    assert not np.array_equal(a, runs[steps][0][0])
    assert not np.array_equal(a, runs[1][0][0])
    assert model.schedule_for(2).timesteps == (1000.0, 500.0)
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="denoise_steps must be a positive integer"):
            model.step([model.new_session("x", seed=0, height=SMALL, width=SMALL)], denoise_steps=bad)


def test_a_checkpoint_of_another_geometry_loads_as_a_custom_preset_with_every_field_of_its_configs(tmp_path):
    """The preset <-> diffusers field table reads back what it wrote, and only a full match is a known preset."""
    import dataclasses

    from kernels.networks import (
        TRANSFORMER_FIELDS,
        Networks,
        build_transformer,
        build_vae,
        load,
        save,
    )
    from kernels.presets import get_preset

    tiny = get_preset("tiny")
    other = dataclasses.replace(tiny, name="other", freq_dim=tiny.freq_dim * 2,
                                vae=dataclasses.replace(tiny.vae, z_dim=tiny.vae.z_dim * 2))
    save(tmp_path / "m", Networks(build_transformer(other), build_vae(other), other))
    (tmp_path / "m" / "turboserve_model.json").unlink()  # a plain diffusers folder
    loaded = load(tmp_path / "m").preset
    assert loaded.name == "custom"  # same layers, heads, widths as tiny, another freq_dim and VAE
    assert loaded.vae == other.vae
    assert all(getattr(loaded, f) == getattr(other, f) for f, _ in TRANSFORMER_FIELDS)
