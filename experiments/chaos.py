"""The chaos suite: faults a serving system meets, injected into a live cluster, and what clients saw.

A ``Server.local`` of three CPU workers (``tiny`` model, a checkpoint store, a
checkpoint after every chunk). Each live fault opens its own sessions, reads them at a
viewer's pace from reader threads and injects one fault:

==========================  ==========================================================
class                       fault
==========================  ==========================================================
``kill-stream``             SIGKILL of the session's worker after a random chunk
``kill-migrate-target``     SIGKILL of the target 0, 150, 400 ms (then random) into
                            ``migrate()``, the reader still streaming
``kill-migrate-source``     SIGKILL of the source at a random point of ``migrate()``
``kill-suspend-resume``     SIGKILL of the worker at a random point of
                            ``suspend(to="disk")``, or of the target of ``resume()``,
                            its reader three chunks behind
``kill-drain``              SIGKILL of the drained worker, or of another one, at a random
                            point of ``server.drain()`` (two sessions on it)
``corrupt-checkpoint``      one random bit flipped in a random file of a suspended
                            session's checkpoint, then ``resume()``
``foreign-checkpoint``      another session's checkpoint copied into the session's folder
``abandoned-reader``        ``stream(3000)`` read once and left: the chunks the worker holds
``bad-api``                 invalid arguments to every public call
``bad-cli``                 invalid command lines (``framework.cli.main``, in process)
==========================  ==========================================================

The control loop runs, as users run it (``Server.local`` starts it with the load-driven
autoscaler), with its minimum set to the suite's three workers
(``turboserve.autoscale.minimum``), so it never scales below the workers the faults
target; it may add a worker while a killed one restarts and retire the extra one
later. Victims, targets and named workers are picked only among *serving* workers: in
the scheduler, not draining (by ``drain()`` or a retirement of the loop) and not still
loading their model. A nanny restarts every killed worker; the next fault waits until
three workers serve again (the autoscaler, not the suite, replaces a worker the cluster
closed). Every chunk a client received is compared with the model's own uninterrupted
run of the session's prompt and seed. Printed per class: faults injected, sessions lost
(a stream or control call that ended in an error other than the fault's own typed
refusal, or a hang past its bound), chunks lost, duplicated, frames that differ from the
uninterrupted run, and the longest gap a reader waited for one chunk; for bad inputs,
how many got a typed error (API) or exit status 2 without a traceback (CLI). The live faults are spread over the eight live classes
(``--faults``); the bad inputs are all tried once each.

Run: ``python -m experiments.chaos --faults 40``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import pathlib
import random
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable

import numpy as np

PROMPT = "a paper boat on a rainy street"
LIVE_CLASSES = (
    "kill-stream",
    "kill-migrate-target",
    "kill-migrate-source",
    "kill-suspend-resume",
    "kill-drain",
    "corrupt-checkpoint",
    "foreign-checkpoint",
    "abandoned-reader",
)
#: Target deaths first at these points of migrate() (seconds), then at random ones.
TARGET_DELAYS_S = (0.0, 0.15, 0.4)
N_WORKERS = 3
PACE_S = 0.1  # a reader's pause between chunks
JOIN_S = 240.0  # the bound on any one wait of the suite (a call that takes longer hangs)


@dataclasses.dataclass
class Outcome:
    """What one injected fault did to the sessions it touched."""

    fault: str
    sessions: int = 0
    lost_sessions: int = 0
    lost_chunks: int = 0
    duplicated: int = 0
    differ: int = 0
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

    def __init__(self, server: Any, store: pathlib.Path, rng: random.Random) -> None:
        from kernels.model import StreamingVideoModel

        self.server, self.store, self.rng = server, store, rng
        self.model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
        self._reference: dict[int, tuple[Any, list[np.ndarray]]] = {}
        self._seed = 100

    # ------------------------------------------------------------ helpers

    def expected(self, seed: int, n: int) -> list[np.ndarray]:
        state, frames = self._reference.setdefault(seed, (self.model.new_session(PROMPT, seed), []))
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
        while len(self.serving()) < N_WORKERS and time.monotonic() < t0 + JOIN_S:
            time.sleep(0.5)
        n, waited = len(self.serving()), time.monotonic() - t0
        if n < N_WORKERS:
            return f"only {n} serving workers after {JOIN_S:.0f} s; "
        return f"waited {waited:.0f} s for {N_WORKERS} serving workers; " if waited > 30 else ""

    def score(self, out: Outcome, seed: int, chunks: list[Any], n: int, error: BaseException | None,
              waits: list[float]) -> None:
        """Fold one session's received chunks into ``out`` (against its uninterrupted run)."""
        out.sessions += 1
        indices = [c.index for c in chunks]
        out.lost_sessions += error is not None
        out.lost_chunks += len(set(range(n)) - set(indices))
        out.duplicated += len(indices) - len(set(indices))
        expected = self.expected(seed, n)
        out.differ += sum(1 for c in chunks if c.index >= n or not np.array_equal(c.frames, expected[c.index]))
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
        from workers.session_actor import call_actor

        out = Outcome("abandoned-reader")
        s, seed = self.open()
        stream = s.stream(3000)
        first = next(stream)
        time.sleep(3.0)  # the reader is gone; the worker must not produce on
        info = s.record()
        actor = self.server.client.sync(call_actor, s._rpc_to(info["worker"]), info["actor_key"], "info")
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


def _undrain(dask_scheduler: Any, worker: str) -> None:
    """Put a worker the suite drained back in service, unless the control loop retires it."""
    from framework.registry import PLUGIN_NAME

    plugin = dask_scheduler.plugins[PLUGIN_NAME]
    if plugin.loop is None or worker not in plugin.loop.retiring:
        plugin.undrain(worker)


def _serving(dask_scheduler: Any) -> list[str]:
    """The workers placement may use now (see ``Chaos.serving``)."""
    from framework.registry import PLUGIN_NAME

    plugin = dask_scheduler.plugins[PLUGIN_NAME]
    out = set(dask_scheduler.workers) - set(plugin.admission.draining) - set(plugin.warming())
    if plugin.loop is not None:
        out -= set(plugin.loop.retiring)
    return sorted(out)


def _config(key: str) -> Any:
    from framework import config

    return config.get(key)


def plan(faults: int, classes: tuple[str, ...] = LIVE_CLASSES) -> list[tuple[str, int]]:
    """The live faults, round robin over ``classes``: ``(class, i-th of its class)``."""
    counts = dict.fromkeys(classes, 0)
    out = []
    for k in range(faults):
        name = classes[k % len(classes)]
        out.append((name, counts[name]))
        counts[name] += 1
    return out


def summarize(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One row per fault class, in the order of first appearance."""
    rows: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        row = rows.setdefault(o.fault, {"class": o.fault, "faults": 0, "sessions": 0, "lost": 0, "chunks lost": 0,
                                        "duplicated": 0, "frames differ": 0, "longest gap s": 0.0, "refused ok": 0})
        row["faults"] += 1
        row["sessions"] += o.sessions
        row["lost"] += o.lost_sessions
        row["chunks lost"] += o.lost_chunks
        row["duplicated"] += o.duplicated
        row["frames differ"] += o.differ
        row["longest gap s"] = max(row["longest gap s"], o.gap_s)
        row["refused ok"] += o.refused_ok
    return list(rows.values())


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0]) if rows else []
    cells = [[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def run(faults: int, seed: int = 0, classes: tuple[str, ...] = LIVE_CLASSES, bad_inputs: bool = True,
        out: Callable[[str], None] = print) -> list[Outcome]:
    """Run the suite; returns every outcome (also printed as they happen, then the table)."""
    import dask.config

    from framework import Server

    rng = random.Random(seed)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="turboserve-chaos-"))
    store = tmp / "state"
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    try:
        # A worker restarted by its nanny may take longer than Dask's default 15 s to
        # register on a loaded machine (issue 13, item 6): give it time to come back.
        # The control loop stays on (as users run it), never below the workers the faults target.
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "120s",
                              "turboserve.autoscale.minimum": N_WORKERS}), Server.local(
            n_workers=N_WORKERS, model="tiny", store=str(store), checkpoint_every=1, dashboard_address=None,
            settings={"max_sessions_per_worker": 8},
        ) as server:
            chaos = Chaos(server, store, rng)
            for name, i in plan(faults, classes):
                note = chaos.settle()
                outcome = getattr(chaos, name.replace("-", "_"))(i)
                outcome.note = note + outcome.note
                outcomes.append(outcome)
                out(f"[{time.monotonic() - t0:6.1f} s] {name:20s} lost {outcome.lost_sessions} "
                    f"chunks lost {outcome.lost_chunks} dup {outcome.duplicated} differ {outcome.differ} "
                    f"gap {outcome.gap_s:.2f} s  {outcome.note}")
            chaos.settle()
            for outcome in (chaos.bad_api() + chaos.bad_cli(tmp)) if bad_inputs else []:
                outcomes.append(outcome)
                if outcome.note:
                    out(f"{outcome.fault:20s} NOT REFUSED CLEANLY: {outcome.note}")
            # The server keeps serving after all of it.
            final, seed_final = chaos.open()
            chunks, waits, error = chaos.streamed(final, 3)
            tail = Outcome("after all faults")
            chaos.score(tail, seed_final, chunks, 3, error, waits)
            tail.fault = "serving after"
            outcomes.append(tail)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = summarize(outcomes)
    out("")
    out(format_table(rows))
    injected = sum(r["faults"] for r in rows if r["class"] != "serving after")
    out(f"\n{injected} faults injected in {time.monotonic() - t0:.0f} s; seed {seed}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=40, help="live faults, spread over the live classes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random fault points")
    parser.add_argument("--classes", default=",".join(LIVE_CLASSES), help="live fault classes, comma-separated")
    parser.add_argument("--no-bad-inputs", action="store_true", help="skip the bad API and CLI inputs")
    args = parser.parse_args(argv)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    if args.faults < 0:
        parser.error(f"--faults must be >= 0, got {args.faults}")
    if not classes or set(classes) - set(LIVE_CLASSES):
        parser.error(f"--classes must name some of {', '.join(LIVE_CLASSES)}; got {args.classes!r}")
    run(args.faults, seed=args.seed, classes=classes, bad_inputs=not args.no_bad_inputs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
