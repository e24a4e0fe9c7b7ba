"""The bare batched model in this process: the reference the serving benchmarks hold the live path against.

:mod:`experiments.bench_serving` (chunk rates, the worker environment) and
:mod:`experiments.bench_chunk_paths` (a chunk through its future against the direct
stream) step it between their live measurements, so that the machine's load hits both
sides alike.
"""

from __future__ import annotations

import time

#: The prompt of every benchmark session (and of the bare model's sessions).
PROMPT = "a red fox running through snow"


class BareModel:
    """The bare batched model in this process, one torch thread like a Dask worker.

    Each batch size has its own sessions, stepped together, so that (like the live
    sessions of one step) they are at the same chunk and their caches have one length.

    Examples
    --------
    >>> bare = BareModel("tiny", [1, 4])      # doctest: +SKIP
    >>> bare.step_s(4)                          # doctest: +SKIP
    0.19
    """

    def __init__(self, model_name: str, sizes: list[int]) -> None:
        from kernels.model import StreamingVideoModel

        self.model = StreamingVideoModel.from_preset(model_name, device="cpu", weights_seed=0, num_threads=1)
        self.states = {b: [self.model.new_session(PROMPT, i) for i in range(b)] for b in sorted(set(sizes))}
        for states in self.states.values():
            self.model.step(states)  # warm-up, as every live session made a chunk first

    def step_s(self, batch: int) -> float:
        """Seconds of one batched step over ``batch`` sessions (advances them)."""
        t0 = time.perf_counter()
        self.model.step(self.states[batch])
        return time.perf_counter() - t0
