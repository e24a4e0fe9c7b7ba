"""``turboserve demo``: a local cluster streams a few sessions and writes their videos."""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading
import time

from tqdm.auto import tqdm

DEFAULT_PROMPTS = (
    "a red fox running through snow",
    "waves breaking on a rocky shore at dusk",
    "a paper boat drifting down a rainy street",
    "a hot air balloon rising over green hills",
)


def run_demo(
    n_sessions: int = 2,
    n_chunks: int = 4,
    n_workers: int | None = None,
    out_dir: str | pathlib.Path = "turboserve-demo",
    prompts: list[str] | None = None,
) -> dict[str, pathlib.Path]:
    """Stream ``n_chunks`` chunks of ``n_sessions`` sessions; write a zarr video and a GIF each.

    All sessions stream at once, so each worker's engine batches its sessions into one
    step (the mean batch size is printed). Returns ``{session_id: gif_path}``.
    """
    import dask.config

    from framework import Server, config
    from storage import VideoStore

    if n_sessions < 1 or n_chunks < 1:
        raise ValueError(f"demo needs at least one session and one chunk, got {n_sessions=} {n_chunks=}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = list(prompts or DEFAULT_PROMPTS)
    written: dict[str, pathlib.Path] = {}
    t0 = time.perf_counter()
    settings = {}
    if config.get("state.store") == config.DEFAULTS["turboserve"]["state"]["store"]:
        # Keep the demo's checkpoints beside its videos rather than in the working directory.
        settings["turboserve.state.store"] = str(out / "state")
    with dask.config.set(settings), Server.local(n_workers=n_workers) as server:
        print(f"cluster up: {len(server.workers())} workers, dashboard {server.dashboard_link}")
        sessions = [
            server.open_session(prompts[i % len(prompts)], seed=i) for i in range(n_sessions)
        ]
        stores = {}
        for s in sessions:
            stores[s.id] = VideoStore(
                out / "videos.zarr", s.id, model=s.model, fps=s.fps, height=s.height, width=s.width
            )
        lock = threading.Lock()
        batches: list[int] = []

        def consume(s) -> None:
            # stream(n) asks for all n chunks at once, so every session stays due and the
            # engine of each worker advances its sessions together in one batched step.
            for chunk in s.stream(n_chunks):
                with lock:
                    stores[s.id].append(chunk.frames, chunk_index=chunk.index)
                    batches.append(chunk.batch_size)
                    bar.set_postfix(latency=f"{chunk.latency_s:.2f}s", batch=chunk.batch_size)
                    bar.update()

        with tqdm(total=n_sessions * n_chunks, desc="chunks", unit="chunk") as bar:
            with concurrent.futures.ThreadPoolExecutor(max_workers=n_sessions) as pool:
                for done in [pool.submit(consume, s) for s in sessions]:
                    done.result()
        print(f"mean batch size of the steps that made these chunks: {sum(batches) / len(batches):.2f}")
        for s in sessions:
            path = out / f"{s.id}.gif"
            stores[s.id].to_video(path)
            written[s.id] = path
            print(f"session {s.id} ({s.prompt!r}) on {s.worker}: {n_chunks} chunks -> {path}")
            s.close()
        print(f"frames as xarray/zarr: {out / 'videos.zarr'}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return written
