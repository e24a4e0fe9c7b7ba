"""``turboserve demo``: a local cluster streams a few sessions and writes their videos."""

from __future__ import annotations

import pathlib
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

    Every round asks every session for its next chunk at once, so the workers' engines
    batch them (the batch size is printed). Returns ``{session_id: gif_path}``.
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
        with tqdm(total=n_sessions * n_chunks, desc="chunks", unit="chunk") as bar:
            for _ in range(n_chunks):
                futures = [(s, s.submit()) for s in sessions]
                for s, fut in futures:
                    chunk = fut.result()
                    stores[s.id].append(chunk.frames, chunk_index=chunk.index)
                    bar.set_postfix(latency=f"{chunk.latency_s:.2f}s", batch=chunk.batch_size)
                    bar.update()
        for s in sessions:
            path = out / f"{s.id}.gif"
            stores[s.id].to_video(path)
            written[s.id] = path
            print(f"session {s.id} ({s.prompt!r}) on {s.worker}: {n_chunks} chunks -> {path}")
            s.close()
        print(f"frames as xarray/zarr: {out / 'videos.zarr'}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return written
