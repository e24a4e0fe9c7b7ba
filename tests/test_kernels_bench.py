"""The kernel benchmark runs end to end and writes a profile the simulator can load."""

from __future__ import annotations

from experiments.bench_kernels import main
from experiments.sim.latency import load_profile


def test_bench_writes_a_loadable_profile(tmp_path, capsys):
    out = tmp_path / "tiny-test.csv"
    assert main(["--batches", "1,2", "--repeats", "1", "--warmup", "0", "--height", "16", "--width", "16",
                 "--contexts", "0,window", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "invariance cost" in printed and "batch-1 chunk latency at context 0" in printed
    text = out.read_text()
    assert text.startswith("# measured by experiments/bench_kernels.py")
    rows = [line for line in text.splitlines() if not line.startswith("#")]
    assert rows[0] == "batch_size,step_s,per_chunk_s,context_frames,separate_s,invariant_s,variant_s"
    assert len(rows) == 1 + 4  # 2 batch sizes x 2 contexts
    model = load_profile(out)
    assert model.batch_sizes == (1, 2) and all(s > 0 for s in model.step_s)
