"""Importers: real LLM/GenAI serving traces as video-session workloads.

No public trace of interactive video sessions exists, so these map the closest real
inputs onto sessions. The mapping rules (also in ``traces/README.md``):

**ServeGen client windows** (:func:`servegen_clients`, Apache-2.0, alibaba/ServeGen).
Each client file ``chunk-<id>-trace.csv`` (``ts, rate, cv, pattern, arg1, arg2``, one
row per 600 s window) becomes one :class:`~traces.generator.ClientSpec` whose session
*arrival* process has the window's rate (requests/s read as sessions/s, before any
``total_rate``/``scale``), CV and family (``Gamma``/``Weibull``); an empty pattern is a
window with rate 0. ``arg1``/``arg2`` are not used: the family's parameters follow from
(rate, CV). Session behaviour (lifetime, active/idle periods, model mix) comes from a
template client, because LLM requests carry no session structure.

**Mooncake conversations** (:func:`mooncake_trace`, Apache-2.0, kvcache-ai/Mooncake).
Requests are grouped into conversations by their prefix-block hash ids: a request
continues the conversation that first produced the longest prefix of its ``hash_ids``
already seen, if that prefix is at least ``min_shared_blocks`` blocks long (block 0, the
system prompt shared by every request, alone does not join conversations); otherwise
it starts a new conversation. A conversation is a session: it opens at its first
request; each request (turn) is an active burst of ``output_length *
seconds_per_token`` seconds from its timestamp; overlapping bursts merge; the gaps
between bursts are idle periods; the session closes ``linger_s`` after its last burst.

**Azure LLM inference 2023** (:func:`azure_trace`, CC-BY-4.0, Microsoft Azure,
"Splitwise", Patel et al., ISCA 2024). The requests carry no session or user id, so each
request opens one session at its ``TIMESTAMP`` (seconds from the first request). The
session's lifetime is drawn from the template's lifetime distribution and assigned by
rank of ``GeneratedTokens`` (the request with the longest output gets the longest
lifetime: a rank coupling that keeps the trace's arrival process and its ordering of
request sizes, with the heavy-tailed lifetimes of video sessions); active/idle periods
and models come from the template.

Data files are read from a data folder: the ``data_dir`` argument, else the
``TURBOSERVE_DATA_DIR`` environment variable, else ``../shared/data`` next to the
repository root. A missing folder raises :class:`DataNotFoundError` saying so.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from dataclasses import replace

import numpy as np
import pandas as pd

from traces.generator import assemble
from traces.lifecycle import EventArrays, lifecycle
from traces.spec import ClientSpec, RateWindows

ENV_VAR = "TURBOSERVE_DATA_DIR"
SERVEGEN_WINDOW_S = 600.0


class DataNotFoundError(FileNotFoundError):
    """A real-trace data file or folder is missing; the message says where it looked."""


def data_dir(path: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The folder of real trace data: ``path``, else ``$TURBOSERVE_DATA_DIR``, else
    ``<repo>/../shared/data``. Raises :class:`DataNotFoundError` if it does not exist."""
    if path is not None:
        root, how = pathlib.Path(path), "the data_dir argument"
    elif os.environ.get(ENV_VAR):
        root, how = pathlib.Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        root = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
        how = "the default (../shared/data next to the repository)"
    if not root.is_dir():
        raise DataNotFoundError(
            f"trace data folder {str(root)!r} (from {how}) does not exist; "
            f"set {ENV_VAR} to the folder holding servegen/, mooncake/, azure-llm-2023/"
        )
    return root


def _data_file(relative: str, root: str | os.PathLike[str] | None) -> pathlib.Path:
    path = data_dir(root) / relative
    if not path.exists():
        raise DataNotFoundError(f"trace data {str(path)!r} does not exist")
    return path


# ---------------------------------------------------------------------------------------
# ServeGen


@functools.lru_cache(maxsize=16)
def _servegen_windows(folder: str) -> tuple[tuple[str, RateWindows], ...]:
    files = sorted(
        pathlib.Path(folder).glob("chunk-*-trace.csv"),
        key=lambda p: int(p.name.split("-")[1]),
    )
    if not files:
        raise DataNotFoundError(f"no ServeGen client files chunk-*-trace.csv in {folder!r}")
    out = []
    for f in files:
        # Plain parsing: 162 small files read faster this way than through pandas.
        ts, rate, cv, family = [], [], [], []
        with open(f) as fh:
            for line in fh:
                parts = line.rstrip("\n").split(",")
                if len(parts) < 4:
                    continue
                pattern = parts[3].strip().lower()
                ts.append(float(parts[0]))
                rate.append(float(parts[1]) if pattern else 0.0)
                cv.append(float(parts[2]) if pattern else 1.0)
                family.append("weibull" if pattern == "weibull" else "gamma")
        if len(ts) > 1 and not np.allclose(np.diff(ts), SERVEGEN_WINDOW_S):
            raise ValueError(f"{f}: windows are not {SERVEGEN_WINDOW_S:.0f} s apart")
        out.append((
            f.name.split("-")[1],
            RateWindows(tuple(rate), tuple(cv), tuple(family), SERVEGEN_WINDOW_S),
        ))
    return tuple(out)


def servegen_clients(
    dataset: str = "language/m-large",
    template: ClientSpec | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    max_clients: int | None = None,
) -> tuple[ClientSpec, ...]:
    """ServeGen clients as :class:`~traces.generator.ClientSpec` with per-window rates.

    Parameters
    ----------
    dataset
        Folder under ``servegen/``: ``language/m-large``, ``multimodal/mm-image`` or
        ``reason/deepseek-r1``.
    template
        Session behaviour and mix for every client (default: ``ClientSpec`` defaults).
    data_dir
        The data folder (see :func:`data_dir`).
    max_clients
        Keep only the clients with the highest mean rate (all by default).

    Returns
    -------
    tuple of ClientSpec
        One per client, named ``<last part of dataset>-<client id>``, in file order.
    """
    folder = _data_file(f"servegen/{dataset}", data_dir)
    template = template or ClientSpec("template")
    prefix = dataset.rstrip("/").split("/")[-1]
    windows = _servegen_windows(str(folder))
    if max_clients is not None:
        ranked = sorted(windows, key=lambda item: -item[1].mean_rate)[:max_clients]
        keep = {cid for cid, _ in ranked}
        windows = tuple(item for item in windows if item[0] in keep)
    return tuple(
        replace(template, client_id=f"{prefix}-{cid}", rate=w) for cid, w in windows
    )


def servegen_summary(
    dataset: str = "language/m-large",
    *,
    top: int = 10,
    hours: int = 24,
    start_s: float = 0.0,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, object]]:
    """A small hourly summary of ServeGen clients, as ``clients`` entries of a YAML spec.

    The ``top`` clients by rate over ``[start_s, start_s + hours h)`` keep their own
    hourly rate (the mean of the six 600 s windows), rate-weighted mean CV, and the
    family carrying most of the hour's rate; all other clients are merged into one
    ``rest`` client (rates summed, CVs rate-weighted). This is what
    ``scenarios/servegen-language-lite.yaml`` holds (derived from ServeGen's
    Apache-2.0 data), so a ServeGen-shaped workload exists without the data folder.
    """
    loaded = _servegen_windows(str(_data_file(f"servegen/{dataset}", data_dir)))
    ids = [cid for cid, _ in loaded]
    windows = [w for _, w in loaded]
    per_hour = int(round(3600.0 / SERVEGEN_WINDOW_S))
    first = int(round(start_s / SERVEGEN_WINDOW_S))
    n = hours * per_hour
    idx = (first + np.arange(n)) % np.array([len(w.rates) for w in windows])[:, None]
    rates = np.array([np.asarray(w.rates)[i] for w, i in zip(windows, idx)])
    cvs = np.array([np.asarray(w.cvs)[i] for w, i in zip(windows, idx)])
    weibull = np.array([np.asarray(w.families)[i] == "weibull" for w, i in zip(windows, idx)])
    order = np.argsort(-rates.sum(axis=1), kind="stable")
    groups = [(f"{dataset.split('/')[-1]}-{ids[c]}", [c]) for c in order[:top]]
    if len(order) > top:
        groups.append(("rest", list(order[top:])))
    clients: list[dict[str, object]] = []
    for name, members in groups:
        r = rates[members].reshape(len(members), hours, per_hour)
        c = cvs[members].reshape(r.shape)
        wb = weibull[members].reshape(r.shape)
        hour_rate = r.sum(axis=0).mean(axis=1)
        total = r.sum(axis=(0, 2))
        safe = np.where(total > 0, total, 1.0)
        hour_cv = np.where(total > 0, (r * c).sum(axis=(0, 2)) / safe, 1.0)
        weibull_share = np.where(total > 0, (r * wb).sum(axis=(0, 2)) / safe, 0.0)
        clients.append({
            "id": name,
            "rate": {
                "window_s": 3600.0,
                "rates": [round(float(x), 6) for x in hour_rate],
                "cvs": [round(float(x), 4) for x in hour_cv],
                "families": ["weibull" if x > 0.5 else "gamma" for x in weibull_share],
            },
        })
    return clients


# ---------------------------------------------------------------------------------------
# Mooncake


def mooncake_conversations(hash_ids: list[list[int]], min_shared_blocks: int = 2) -> np.ndarray:
    """Conversation index of every request (in order), by the prefix rule of the module doc.

    ``hash_ids[i]`` are request ``i``'s prefix-block ids (a block id identifies the whole
    prefix up to it). Conversations are numbered in order of their first request.
    """
    owner: dict[int, int] = {}
    conv = np.empty(len(hash_ids), dtype=np.int64)
    n_conv = 0
    for i, blocks in enumerate(hash_ids):
        found = -1
        for j in range(len(blocks) - 1, min_shared_blocks - 2, -1):
            c = owner.get(blocks[j])
            if c is not None:
                found = c
                break
        if found < 0:
            found = n_conv
            n_conv += 1
        conv[i] = found
        for b in blocks:
            owner.setdefault(b, found)
    return conv


def mooncake_trace(
    template: ClientSpec | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seconds_per_token: float = 0.1,
    linger_s: float = 0.0,
    min_shared_blocks: int = 2,
    client_id: str = "mooncake",
    seed: int = 0,
) -> pd.DataFrame:
    """The Mooncake conversation trace as video sessions (rule in the module docstring).

    Parameters
    ----------
    template
        Its ``mix`` gives each session's model and chunk shape (drawn with ``seed``); its
        rate and period distributions are not used: the data gives the structure.
    data_dir
        The data folder (see :func:`data_dir`).
    seconds_per_token
        Length of a turn's active burst per generated token.
    linger_s
        Idle time between a conversation's last burst and its close.
    min_shared_blocks
        Prefix blocks a request must share with an earlier one to continue its
        conversation (>= 2 keeps the universal system-prompt block from joining all).
    client_id
        The ``client_id`` of every session (sessions are ``CLIENT-i``).
    seed
        Seed of the model mix draw.
    """
    if min_shared_blocks < 1:
        raise ValueError(f"min_shared_blocks must be >= 1, got {min_shared_blocks!r}")
    if not seconds_per_token > 0:
        raise ValueError(f"seconds_per_token must be > 0, got {seconds_per_token!r}")
    if not linger_s >= 0:
        raise ValueError(f"linger_s must be >= 0, got {linger_s!r}")
    path = _data_file("mooncake/conversation_trace.jsonl", data_dir)
    template = template or ClientSpec(client_id)
    times, outputs, hashes = [], [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                times.append(rec["timestamp"] / 1000.0)
                outputs.append(rec["output_length"])
                hashes.append(rec["hash_ids"])
    conv = mooncake_conversations(hashes, min_shared_blocks)
    start = np.asarray(times, dtype=np.float64)
    start -= start.min()
    end = start + np.asarray(outputs, dtype=np.float64) * seconds_per_token
    order = np.lexsort((start, conv))
    c, s, e = conv[order], start[order], end[order]
    first = np.ones(len(c), dtype=bool)
    first[1:] = c[1:] != c[:-1]
    # Running max of burst ends within each conversation: a turn that starts after every
    # earlier burst has ended begins a new active period.
    run_end = pd.Series(e).groupby(c).cummax().to_numpy()
    prev_end = np.empty(len(c))
    prev_end[1:] = run_end[:-1]
    new_period = first | (s > np.where(first, -np.inf, prev_end))
    last = np.ones(len(c), dtype=bool)
    last[:-1] = c[1:] != c[:-1]
    period_starts = np.flatnonzero(new_period)
    # Each period ends at the running max just before the next period starts (or at the
    # conversation's last turn).
    period_end_rows = np.concatenate([period_starts[1:] - 1, [len(c) - 1]])
    p_conv = c[period_starts]
    p_start = s[period_starts]
    p_end = run_end[period_end_rows]
    p_first = first[period_starts]
    p_last = last[period_end_rows]
    n_sessions = int(conv.max()) + 1 if len(conv) else 0
    time = np.concatenate([
        p_start[p_first], p_start[~p_first], p_end[~p_last],
        p_end[p_last] + linger_s, p_end[p_last & (linger_s > 0)],
    ])
    session = np.concatenate([
        p_conv[p_first], p_conv[~p_first], p_conv[~p_last], p_conv[p_last],
        p_conv[p_last & (linger_s > 0)],
    ])
    code = np.concatenate([
        np.zeros(p_first.sum(), np.int64), np.ones((~p_first).sum(), np.int64),
        np.full((~p_last).sum(), 2), np.full(p_last.sum(), 3),
        np.full((p_last & (linger_s > 0)).sum(), 2),
    ])
    rng = np.random.default_rng(seed)
    weights = np.array([v.weight for v in template.mix])
    variant = rng.choice(len(template.mix), size=n_sessions, p=weights / weights.sum())
    # Block order keeps each session's events in order: open, active/idle, close, and
    # the linger idle (earlier than its close) is sorted before it by time.
    events = EventArrays(time, session, code)
    return assemble([(client_id, events, [template.mix[int(v)] for v in variant])])


# ---------------------------------------------------------------------------------------
# Azure


@functools.lru_cache(maxsize=4)
def _azure_requests(path: str) -> pd.DataFrame:
    table = pd.read_csv(path)
    stamps = pd.to_datetime(table["TIMESTAMP"], format="mixed")
    seconds = (stamps - stamps.min()).dt.total_seconds().to_numpy()
    return pd.DataFrame({"time_s": seconds, "generated": table["GeneratedTokens"].to_numpy()})


def azure_requests(kind: str = "conv", *, data_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The Azure LLM 2023 requests of ``kind`` (``conv`` or ``code``) as ``time_s,
    generated`` (seconds from the first request, generated tokens), sorted by time."""
    if kind not in ("conv", "code"):
        raise ValueError(f"unknown Azure trace kind {kind!r}; known: ['code', 'conv']")
    path = _data_file(f"azure-llm-2023/AzureLLMInferenceTrace_{kind}.csv", data_dir)
    return _azure_requests(str(path)).sort_values("time_s", kind="stable").reset_index(drop=True)


def azure_trace(
    kind: str = "conv",
    template: ClientSpec | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    share: float = 1.0,
    duration_s: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The Azure LLM 2023 trace as video sessions (rule in the module docstring).

    Parameters
    ----------
    kind
        ``conv`` (conversation service) or ``code`` (code completion).
    template
        Lifetime, active/idle periods and model mix of the sessions.
    share
        Share of requests that open a session (each kept with this probability); > 1
        superposes ``ceil(share)`` copies of the arrivals, each shifted circularly by a
        random offset, thinned to ``share`` times the requests.
    duration_s
        Trace length (default: the last request's time rounded up to the next whole
        minute); sessions close by then.
    seed
        Seed of the thinning, lifetimes, periods and mix.
    """
    if not share > 0:
        raise ValueError(f"share must be > 0, got {share!r}")
    requests = azure_requests(kind, data_dir=data_dir)
    template = template or ClientSpec(f"azure-{kind}")
    rng = np.random.default_rng(seed)
    t = requests["time_s"].to_numpy()
    tokens = requests["generated"].to_numpy(dtype=np.float64)
    span = float(t.max()) if len(t) else 0.0
    copies = int(np.ceil(share))
    all_t, all_tok = [], []
    for k in range(copies):
        keep = rng.random(len(t)) < share / copies
        shift = 0.0 if k == 0 else rng.uniform(0.0, span)
        all_t.append((t[keep] + shift) % span if k and span > 0 else t[keep])
        all_tok.append(tokens[keep])
    opens = np.concatenate(all_t)
    toks = np.concatenate(all_tok)
    order = np.argsort(opens, kind="stable")
    opens, toks = opens[order], toks[order]
    lifetimes = np.sort(template.lifetime.sample(rng, len(opens)))
    # Rank coupling; random tie-breaking so equal token counts get unrelated lifetimes.
    rank = np.lexsort((rng.random(len(toks)), toks))
    coupled = np.empty(len(opens))
    coupled[rank] = lifetimes
    # Default end: the next whole minute after the last request, so that it opens too.
    end = float(duration_s) if duration_s is not None else 60.0 * (math.floor(span / 60.0) + 1)
    events, variant = lifecycle(template, opens, coupled, rng, end)
    return assemble([(template.client_id, events, [template.mix[int(v)] for v in variant])])
