"""A chunk-future reader whose worker is killed gets its next chunk from the recovered session
(issue 13, "a chunk never made after a recovery" under the chaos suite's trace load).

Traced from the chaos load (3 runs, one session each: chunk 11, 12 or 109 never made,
``ChunkTimeout`` after 300 s): a session recovered from a checkpoint at chunk ``c`` makes
chunks ``c, c+1, ...`` again into its new actor's outbox. A reader that reads through
chunk futures already has them, so nobody takes them, and nothing acknowledged them: the
recovered actor's acknowledged prefix stayed at ``c``, so with
``engine.max-unread-chunks`` (8) the engine stopped at ``c + 8``, and a reader whose
next chunk ``k`` was ``c + 8`` or beyond (a checkpoint that lagged its reads by 8 chunks:
a copy dropped when the state left the engine before it was acknowledged, or no periodic
checkpoints) waited for ever. A future's request now carries what its client had read
when it was submitted, and the client's own request after a relocation too.

Live: checkpoints only on suspend (``checkpoint_every=0``), so the recovery starts from
chunk 0; 10 chunks read through futures, the session's worker SIGKILLed, then 6 more
through futures: all come, in order, bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import time

import dask
import numpy as np
import pytest

from framework import Server

pytestmark = pytest.mark.slow

PROMPT = "a paper boat in the rain"
BOUND_S = 45  # the chunk timeout; the stuck session hit it, a recovered one is far under


def test_a_futures_reader_gets_its_next_chunk_after_a_recovery_past_the_unread_window(tmp_path, reference):
    with dask.config.set({"turboserve.client.chunk-timeout": f"{BOUND_S}s"}), \
            Server.local(n_workers=2, model="tiny", store=str(tmp_path), checkpoint_every=0,
                         dashboard_address=None) as server:
        s = server.open_session(PROMPT, seed=7)
        chunks = [s.submit().result(timeout=60) for _ in range(10)]
        a = s.worker
        pid = server.client.run(os.getpid, workers=[a])[a]
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        chunks += [s.submit().result(timeout=BOUND_S + 30) for _ in range(6)]
        took = time.monotonic() - t0
        kinds = [e["kind"] for e in s.events()]
    assert [c.index for c in chunks] == list(range(16))
    assert "recovered" in kinds, kinds
    assert took < BOUND_S, f"6 chunks after the kill took {took:.1f} s"
    for got, want in zip(chunks, reference(PROMPT, 7, 16)):
        np.testing.assert_array_equal(got.frames, want)
