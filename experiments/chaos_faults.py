"""The chaos suite's harness and faults: sessions read from threads, one fault injected, what clients saw.

:class:`Chaos` holds the cluster (a :class:`framework.Server`), the checkpoint store
and a reference model; each live fault (``kill_stream``, ``kill_migrate_target``, ...,
one method per class of :mod:`experiments.chaos`) opens its own sessions, reads them at
a viewer's pace, injects its fault and returns an :class:`Outcome`: every chunk a client
received, compared with the model's own uninterrupted run of the session's prompt and
seed. ``bad_api`` and ``bad_cli`` try the invalid inputs. The runner, the table and the
command line are :mod:`experiments.chaos`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import random
import shutil
import signal
import threading
import time
from typing import Any, Callable

import numpy as np

from workers.errors import UnknownWorker

PROMPT = "a paper boat on a rainy street"
#: Target deaths first at these points of migrate() (seconds), then at random ones.
TARGET_DELAYS_S = (0.0, 0.15, 0.4)
N_WORKERS = 3
PACE_S = 0.1  # a reader's pause between chunks
JOIN_S = 240.0  # the bound on any one wait of the suite (a call that takes longer hangs)


@dataclasses.dataclass
class Outcome:
    """What one injected fault did to the sessions it touched."""

    fault: str
    faults: int = 1  # faults injected (0: a row of sessions only, the trace load or the server afterwards)
    sessions: int = 0
    lost_sessions: int = 0
    lost_chunks: int = 0
    duplicated: int = 0
    differ: int = 0  # chunks whose frames differ from the uninterrupted run beyond the class's tolerance
    near: int = 0  # chunks not bit-identical but within it (a parallel group's: one uint8 level)
    gap_s: float = 0.0
    refused_ok: int = 0  # bad inputs: typed error / exit 2
    note: str = ""


class Reader(threading.Thread):
    """Streams ``n`` chunks of a session at a viewer's pace and records them with their waits."""

    def __init__(self, session: Any, n: int, pace_s: float = PACE_S) -> None:
        super().__init__(daemon=True)
        self.session, self.n, self.pace_s = session, n, pace_s
        self.chunks: list[Any] = []
        self.waits: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            t_ready = time.monotonic()
            for chunk in self.session.stream(self.n):
                self.waits.append(time.monotonic() - t_ready)
                self.chunks.append(chunk)
                time.sleep(self.pace_s)
                t_ready = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - what the client saw is the measurement
            self.error = exc

    def wait_for(self, k: int, timeout: float = JOIN_S) -> None:
        deadline = time.monotonic() + timeout
        while len(self.chunks) < k and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)


class Chaos:
    """One cluster, a reference model, and the faults (see the module docstring)."""

    def __init__(self, server: Any, store: pathlib.Path, rng: random.Random, settle_s: float = JOIN_S) -> None:
        from kernels.model import StreamingVideoModel

        self.server, self.store, self.rng = server, store, rng
        #: How long :meth:`settle` waits for ``N_WORKERS`` serving workers before the next fault goes ahead.
        self.settle_s = settle_s
        self.model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
        self._reference: dict[tuple[str, int], tuple[Any, list[np.ndarray]]] = {}
        self._seed = 100
        #: The last duration of an unfaulted merge and split (kill-transform draws its kill times below 1.5x it).
        self._transform_s = {"merge": 0.2, "split": 0.2}

    # ------------------------------------------------------------ helpers

    def expected(self, seed: int, n: int, prompt: str = PROMPT) -> list[np.ndarray]:
        """The first ``n`` chunks of the model's own uninterrupted degree-1 run of ``prompt`` and ``seed``."""
        state, frames = self._reference.setdefault((prompt, seed), (self.model.new_session(prompt, seed), []))
        while len(frames) < n:
            frames.append(self.model.step([state])[0])
        return frames[:n]

    def open(self, **kw: Any) -> tuple[Any, int]:
        self._seed += 1
        return self.server.open_session(PROMPT, seed=self._seed, **kw), self._seed

    def where(self, session: Any) -> str | None:
        return next(r for r in self.server.sessions() if r["id"] == session.id)["worker"]

    def pid(self, worker: str | None) -> int | None:
        try:
            return self.server.client.run(os.getpid, workers=[worker])[worker]
        except Exception:  # noqa: BLE001 - it died already
            return None

    def kill_at(self, worker: str | None, delay_s: float) -> threading.Timer:
        """SIGKILL the worker's process ``delay_s`` from now (its nanny restarts it)."""
        pid = self.pid(worker)
        timer = threading.Timer(delay_s, lambda: pid is not None and os.kill(pid, signal.SIGKILL))
        timer.start()
        return timer

    def serving(self) -> list[str]:
        """Workers that take sessions now: in the scheduler, not draining or retiring, model loaded."""
        return sorted(self.server.client.run_on_scheduler(_serving))

    def others(self, worker: str | None) -> list[str]:
        return [w for w in self.serving() if w != worker]

    def settle(self) -> str:
        """Wait until ``N_WORKERS`` workers serve; returns a note when that took long or did not happen.

        A nanny restarts a killed worker, and the autoscaler (minimum ``N_WORKERS``)
        replaces one the cluster closed for good (issue 13, item 6); a worker the control
        loop is retiring does not count.
        """
        t0 = time.monotonic()
        while len(self.serving()) < N_WORKERS and time.monotonic() < t0 + self.settle_s:
            time.sleep(0.5)
        n, waited = len(self.serving()), time.monotonic() - t0
        if n < N_WORKERS:
            places = self.server.client.run_on_scheduler(_places)
            return f"only {n} serving workers after {self.settle_s:.0f} s ({places}); "
        return f"waited {waited:.0f} s for {N_WORKERS} serving workers; " if waited > 30 else ""

    def score(self, out: Outcome, seed: int, chunks: list[Any], n: int, error: BaseException | None,
              waits: list[float], tolerance: int = 0, prompt: str = PROMPT) -> None:
        """Fold one session's received chunks into ``out`` (against its uninterrupted run).

        A chunk differs when any pixel is more than ``tolerance`` uint8 levels off; one
        within it but not bit-identical counts as ``near``.
        """
        out.sessions += 1
        indices = [c.index for c in chunks]
        out.lost_sessions += error is not None
        out.lost_chunks += len(set(range(n)) - set(indices))
        out.duplicated += len(indices) - len(set(indices))
        expected = self.expected(seed, n, prompt)
        for c in chunks:
            level = levels_off(c.frames, expected[c.index]) if c.index < n else 256
            out.differ += level > tolerance
            out.near += 0 < level <= tolerance
        out.gap_s = max([out.gap_s, *waits])
        if error is not None:
            out.note += f"{type(error).__name__}: {str(error)[:120]}; "

    def streamed(self, session: Any, n: int) -> tuple[list[Any], list[float], BaseException | None]:
        reader = Reader(session, n, pace_s=0.0)
        reader.start()
        reader.join(JOIN_S)
        if reader.is_alive():
            return reader.chunks, reader.waits, TimeoutError(f"stream({n}) still waiting after {JOIN_S} s")
        return reader.chunks, reader.waits, reader.error

    def read(self, stream: Any, k: int) -> tuple[list[Any], list[float], BaseException | None]:
        """The next ``k`` chunks of an open ``stream()`` iterator, within the suite's bound."""
        box: dict[str, Any] = {"chunks": [], "waits": []}

        def run() -> None:
            try:
                for _ in range(k):
                    t0 = time.monotonic()
                    box["chunks"].append(next(stream))
                    box["waits"].append(time.monotonic() - t0)
            except BaseException as exc:  # noqa: BLE001 - what the client saw is the measurement
                box["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(JOIN_S)
        if thread.is_alive():
            return box["chunks"], box["waits"], TimeoutError(f"the stream still waits after {JOIN_S} s")
        return box["chunks"], box["waits"], box.get("error")

    def made(self, session: Any, n: int) -> None:
        """Wait (within the suite's bound) until the session's worker has made its first ``n`` chunks."""
        deadline = time.monotonic() + JOIN_S
        while session.record()["chunks"] < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def call(self, fn: Callable[[], Any]) -> tuple[BaseException | None, float, bool]:
        """Run ``fn`` in a thread with the suite's bound: (its error, seconds, whether it hung)."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001
                box["error"] = exc

        t0 = time.monotonic()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(JOIN_S)
        return box.get("error"), time.monotonic() - t0, thread.is_alive()

    # ------------------------------------------------------------ live faults

    def kill_stream(self, i: int) -> Outcome:
        out = Outcome("kill-stream")
        s, seed = self.open()
        victim = self.where(s)
        pid = self.server.client.run(os.getpid, workers=[victim])[victim]
        reader = Reader(s, 12, pace_s=0.2)
        reader.start()
        reader.wait_for(self.rng.randint(1, 6))
        at = len(reader.chunks)
        os.kill(pid, signal.SIGKILL)
        reader.join(JOIN_S)
        self.score(out, seed, reader.chunks, 12, reader.error or (TimeoutError("hung") if reader.is_alive() else None),
                   reader.waits)
        out.note += f"killed {victim} after {at} chunks"
        self.close(s)
        return out

    def _kill_in_migrate(self, name: str, delay_s: float, kill_target: bool) -> Outcome:
        out = Outcome(name)
        s, seed = self.open()
        reader = Reader(s, 8)
        reader.start()
        reader.wait_for(2)
        source = self.where(s)
        target = self.rng.choice(self.others(source))
        timer = self.kill_at(target if kill_target else source, delay_s)
        error, took, hung = self.call(lambda: s.migrate(target))
        timer.join()
        reader.join(JOIN_S)
        if hung:
            error = TimeoutError(f"migrate() still waiting after {JOIN_S} s")
        self.score(out, seed, reader.chunks, 8,
                   reader.error or (TimeoutError("stream hung") if reader.is_alive() else None), reader.waits)
        if hung:
            out.lost_sessions += 1
        what = "committed" if error is None else type(error).__name__
        out.note += f"{'target' if kill_target else 'source'} killed {delay_s * 1e3:.0f} ms in: {what} after {took:.2f} s"
        self.close(s)
        return out

    def kill_migrate_target(self, i: int) -> Outcome:
        delay = TARGET_DELAYS_S[i] if i < len(TARGET_DELAYS_S) else self.rng.uniform(0.0, 0.6)
        return self._kill_in_migrate("kill-migrate-target", delay, kill_target=True)

    def kill_migrate_source(self, i: int) -> Outcome:
        return self._kill_in_migrate("kill-migrate-source", self.rng.uniform(0.0, 0.6), kill_target=False)

    def kill_suspend_resume(self, i: int) -> Outcome:
        out = Outcome("kill-suspend-resume")
        s, seed = self.open()
        # The reader is behind: it asked for five chunks and read two, so the worker holds
        # chunks nobody read when the fault hits (the disk checkpoint is past them).
        stream = s.stream(5)
        chunks, waits, error = self.read(stream, 2)
        self.made(s, 5)
        delay = self.rng.uniform(0.0, 0.3)
        if i % 2 == 0:  # the worker dies while the state goes to disk
            victim = self.where(s)
            timer = self.kill_at(victim, delay)
            step_error, took, hung = self.call(lambda: s.suspend(to="disk"))
            timer.join()
            what = "suspend"
        else:  # the worker it resumes on dies while the state comes back
            s.suspend(to="disk")
            victim = self.rng.choice(self.serving())
            timer = self.kill_at(victim, delay)
            step_error, took, hung = self.call(lambda: s.resume(worker=victim))
            timer.join()
            what = "resume"
        more, more_waits, error = self.read(stream, 3) if not hung else ([], [], TimeoutError(f"{what} hung"))
        self.score(out, seed, chunks + more, 5, error, waits + more_waits)
        out.note += (f"killed {victim} {delay * 1e3:.0f} ms into {what}(): "
                     f"{'returned' if step_error is None else type(step_error).__name__} after {took:.2f} s")
        self.close(s)
        return out

    def kill_drain(self, i: int) -> Outcome:
        out = Outcome("kill-drain")
        victim = self.rng.choice(self.serving())
        opened = [self.open(worker=victim) for _ in range(2)]
        readers = [Reader(s, 6) for s, _ in opened]
        for r in readers:
            r.start()
        for r in readers:
            r.wait_for(1)
        delay = self.rng.uniform(0.0, 0.5)
        killed = victim if i % 2 == 0 else self.rng.choice(self.others(victim))
        timer = self.kill_at(killed, delay)
        error, took, hung = self.call(lambda: self.server.drain(victim, retire=False))
        timer.join()
        for (s, seed), r in zip(opened, readers):
            r.join(JOIN_S)
            self.score(out, seed, r.chunks, 6, r.error or (TimeoutError("stream hung") if r.is_alive() else None),
                       r.waits)
        if hung:
            out.lost_sessions += 1
        self.server.client.run_on_scheduler(_undrain, worker=victim)  # unless the loop retires it meanwhile
        out.note += (f"{'the drained worker' if killed == victim else 'another worker'} killed "
                     f"{delay * 1e3:.0f} ms into drain(): {'returned' if error is None else type(error).__name__} "
                     f"after {took:.2f} s")
        for s, _ in opened:
            self.close(s)
        return out

    def kill_transform(self, i: int) -> Outcome:
        """SIGKILL of a rank at a random point of a parallelism transformation under a streaming session.

        ``i % 4``: the follower killed during the merge of the session's worker and another
        one into a degree-2 group, the leader during the split back to degree 1 (after two
        chunks at degree 2), then the follower during a split and the leader during a merge
        (so that two faults already kill each rank and interrupt each call). The kill falls
        in the first 1.5 times the last such call's duration: inside the call, or in the
        group's first steps after it.
        """
        out = Outcome("kill-transform")
        s, seed = self.open()
        reader = Reader(s, 12)
        reader.start()
        reader.wait_for(2)
        lead = self.where(s)
        # A follower holds no session: the load's go elsewhere first, and none comes until the
        # merge returned (a follower in a group takes none of its own). A worker that leaves
        # as it is picked (one an earlier fault killed, its nanny restarting it) is
        # UnknownWorker: pick again once the cluster settled.
        for attempt in range(3):
            follower = self.rng.choice(self.others(lead))
            try:
                self.server.drain(follower, retire=False)
                break
            except UnknownWorker:
                if attempt == 2:
                    raise
                self.settle()
        split = i % 4 in (1, 2)
        what = "split" if split else "merge"
        pair = [lead, follower]
        if split:
            merge_error, _, _ = self.call(lambda: self.server.set_parallelism(2, pair))
            self.server.client.run_on_scheduler(_undrain, worker=follower)
            if merge_error is not None:
                out.note += f"the merge before the split failed: {type(merge_error).__name__}; "
            reader.wait_for(len(reader.chunks) + 2)
        victim = follower if i % 2 == 0 else lead
        delay = self.rng.uniform(0.0, 1.5 * self._transform_s[what])
        timer = self.kill_at(victim, delay)
        error, took, hung = self.call(lambda: self.server.set_parallelism(1 if split else 2, pair))
        self.server.client.run_on_scheduler(_undrain, worker=follower)
        timer.join()
        if error is None and not hung:
            self._transform_s[what] = took
        reader.join(JOIN_S)
        self.score(out, seed, reader.chunks, 12,
                   reader.error or (TimeoutError("stream hung") if reader.is_alive() else None), reader.waits,
                   tolerance=1)
        if hung:
            out.lost_sessions += 1
        left = self.ungroup()
        out.note += (f"{'follower' if victim == follower else 'leader'} killed {delay * 1e3:.0f} ms into "
                     f"{what} ({'during' if delay < took else 'after'} the call): "
                     f"{'returned' if error is None else type(error).__name__} after {took:.2f} s{left}")
        self.close(s)
        return out

    def ungroup(self) -> str:
        """Split every group left (the next fault starts at degree 1); a note when one would not split."""
        for row in self.server.parallelism():
            if row["degree"] > 1:
                error, _, hung = self.call(lambda: self.server.set_parallelism(1, row["workers"]))
                if error is not None or hung:
                    return f"; the group left would not split: {'hung' if hung else repr(error)[:120]}"
        return ""

    def corrupt_checkpoint(self, i: int) -> Outcome:
        out = Outcome("corrupt-checkpoint")
        s, seed = self.open()
        chunks, waits, _ = self.streamed(s, 3)
        s.suspend(to="disk")
        files = sorted(p for p in (self.store / s.id).rglob("*") if p.is_file())
        victim = self.rng.choice(files)
        data = bytearray(victim.read_bytes())
        if data:
            bit = self.rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
            victim.write_bytes(bytes(data))
        more, more_waits, error = self.streamed(s, 3)
        self.score(out, seed, chunks + more, 6, error, waits + more_waits)
        kinds = [e["kind"] for e in s.events() if e["kind"] in ("restored", "regenerated")]
        out.note += f"bit flipped in {victim.relative_to(self.store / s.id)}: {kinds[-1] if kinds else '?'}"
        self.close(s)
        return out

    def foreign_checkpoint(self, i: int) -> Outcome:
        out = Outcome("foreign-checkpoint")
        (a, seed_a), (b, seed_b) = self.open(), self.open()
        got_a, waits_a, _ = self.streamed(a, 2)
        got_b, waits_b, _ = self.streamed(b, 4)
        a.suspend(to="disk")
        b.suspend(to="disk")
        shutil.rmtree(self.store / a.id)
        shutil.copytree(self.store / b.id, self.store / a.id)
        more_a, more_waits_a, error_a = self.streamed(a, 3)
        more_b, more_waits_b, error_b = self.streamed(b, 1)
        self.score(out, seed_a, got_a + more_a, 5, error_a, waits_a + more_waits_a)
        self.score(out, seed_b, got_b + more_b, 5, error_b, waits_b + more_waits_b)
        kinds = [e.get("error", e["kind"]) for e in a.events() if e["kind"] in ("restored", "regenerated")]
        out.note += f"the victim: {kinds[-1] if kinds else '?'}"
        self.close(a)
        self.close(b)
        return out

    def abandoned_reader(self, i: int) -> Outcome:
        from workers.actor_rpc import call_actor

        out = Outcome("abandoned-reader")
        s, seed = self.open()
        stream = s.stream(3000)
        first = next(stream)
        time.sleep(3.0)  # the reader is gone; the worker must not produce on
        info = s.record()
        actor = self.server.client.sync(call_actor, s._channel.rpc_to(info["worker"]), info["actor_key"], "info")
        window = int(_config("engine.max-unread-chunks"))
        self.score(out, seed, [first], 1, None, [])
        error, took, hung = self.call(lambda: self.close(s, quiet=False))
        out.lost_sessions += hung
        out.note += f"held {actor['unread']} unread of at most {window} (made {actor['chunk_index']}); close() {took:.2f} s"
        if actor["unread"] > window:
            out.lost_sessions += 1  # counted as a failure of the class
        del stream
        return out

    def close(self, session: Any, quiet: bool = True) -> None:
        try:
            session.close()
        except Exception:
            if not quiet:
                raise

    # ------------------------------------------------------------ bad inputs

    def bad_api(self) -> list[Outcome]:
        from framework.errors import TurboserveError

        s, seed = self.open()
        first = list(s.stream(1))
        nowhere = "tcp://127.0.0.1:1"
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("seed=2**70", lambda: self.server.open_session(PROMPT, seed=2**70)),
            ("seed=-1", lambda: self.server.open_session(PROMPT, seed=-1)),
            ("seed='1'", lambda: self.server.open_session(PROMPT, seed="1")),
            ("empty prompt", lambda: self.server.open_session("", seed=0)),
            ("prompt of 64 KiB", lambda: self.server.open_session("x" * 65536, seed=0)),
            ("prompt None", lambda: self.server.open_session(None, seed=0)),
            ("65536x65536", lambda: self.server.open_session(PROMPT, height=65536, width=65536)),
            ("height 0", lambda: self.server.open_session(PROMPT, height=0, width=64)),
            ("height 63 (not a multiple)", lambda: self.server.open_session(PROMPT, height=63, width=64)),
            ("model 'nope'", lambda: self.server.open_session(PROMPT, model="nope")),
            ("session id '../x'", lambda: self.server.open_session(PROMPT, session_id="../x")),
            ("session id taken", lambda: self.server.open_session(PROMPT, session_id=s.id)),
            ("worker nowhere", lambda: self.server.open_session(PROMPT, worker=nowhere)),
            ("stream(-1)", lambda: list(s.stream(-1))),
            ("stream('3')", lambda: list(s.stream("3"))),
            ("migrate(nowhere)", lambda: s.migrate(nowhere)),
            ("migrate(transport='pigeon')", lambda: s.migrate(self.others(s.worker)[0], transport="pigeon")),
            ("suspend(to='tape')", lambda: s.suspend(to="tape")),
            ("resume(worker=nowhere)", lambda: s.resume(worker=nowhere)),
            ("drain(nowhere)", lambda: self.server.drain(nowhere)),
            ("session('unknown')", lambda: self.server.session("unknown-id")),
        ]
        outcomes = []
        for what, fn in cases:
            error, took, hung = self.call(fn)
            out = Outcome("bad-api")
            typed = isinstance(error, TurboserveError)
            out.refused_ok = int(typed and not hung)
            if not out.refused_ok:
                out.note = f"{what}: {'hung' if hung else 'no error' if error is None else type(error).__name__}"
            outcomes.append(out)
        # the server keeps serving: the session streams on, identical
        out = outcomes[-1]
        more, waits, error = self.streamed(s, 2)
        self.score(out, seed, first + more, 3, error, waits)
        self.close(s)
        return outcomes

    def bad_cli(self, tmp: pathlib.Path) -> list[Outcome]:
        from framework import cli

        (tmp / "empty.csv").write_text("")
        (tmp / "garbage.parquet").write_bytes(b"not parquet at all")
        cases = [
            ["trace", "stats", str(tmp)],  # a directory as a trace
            ["trace", "stats", str(tmp / "missing.parquet")],
            ["trace", "stats", str(tmp / "garbage.parquet")],
            ["trace", "validate", str(tmp / "empty.csv")],
            ["--config", "engine.max-batch=[", "config"],  # malformed YAML
            ["--config", "nonsense", "config"],
            ["demo", "--workers", "-1"],
            ["demo", "--sessions", "0"],
            ["demo", "--chunks", "-3"],
            ["demo", "--sessions", "many"],
            ["replay", "--out", str(tmp / "o"), str(tmp / "missing.csv")],
            ["replay", str(tmp / "missing.csv")],  # --out missing
            ["experiment", "sweep", "--workers", "-1"],
            ["no-such-command"],
        ]
        outcomes = []
        for argv in cases:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = cli.main(argv)
                except SystemExit as exc:
                    rc = exc.code
                except BaseException as exc:  # noqa: BLE001 - an escaping exception is the failure
                    rc = f"raised {type(exc).__name__}"
            text = err.getvalue()
            out = Outcome("bad-cli")
            out.refused_ok = int(rc == 2 and "Traceback" not in text)
            if not out.refused_ok:
                out.note = f"{' '.join(argv)}: exit {rc}"
            outcomes.append(out)
        return outcomes


def levels_off(got: np.ndarray, want: np.ndarray) -> int:
    """The largest difference, in uint8 levels, between two chunks' frames (256: other shapes)."""
    if got.shape != want.shape:
        return 256
    return int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max(initial=0))


def _undrain(dask_scheduler: Any, worker: str) -> None:
    """Put a worker the suite drained back in service, unless the control loop retires it."""
    from framework.registry import PLUGIN_NAME

    plugin = dask_scheduler.plugins[PLUGIN_NAME]
    if plugin.loop is None or worker not in plugin.loop.fleet.retiring:
        plugin.undrain(worker)


def _places(dask_scheduler: Any) -> dict[str, list[str]]:
    """The workers in the scheduler and those of them placement may not use now, and why."""
    from framework.registry import PLUGIN_NAME

    plugin = dask_scheduler.plugins[PLUGIN_NAME]
    workers = set(dask_scheduler.workers)
    return {"workers": sorted(workers), "draining": sorted(workers & set(plugin.admission.draining)),
            "warming": sorted(workers & set(plugin.warming())),
            "retiring": sorted(workers & set(plugin.loop.fleet.retiring)) if plugin.loop is not None else []}


def _serving(dask_scheduler: Any) -> list[str]:
    """The workers placement may use now (see ``Chaos.serving``)."""
    places = _places(dask_scheduler)
    return sorted(set(places["workers"]) - set(places["draining"]) - set(places["warming"]) - set(places["retiring"]))


def _config(key: str) -> Any:
    from framework import config

    return config.get(key)
