"""The workload generator: valid traces, the target arrival process, reproducibility."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces.distributions import Dist, Family, weibull_shape
from traces.arrivals import arrivals
from traces.generator import generate
from traces.spec import ClientSpec, RateWindows, Variant, WorkloadSpec
from traces.spec_io import load_spec, spec_from_dict, spec_to_dict
from traces.io import session_table, validate
from traces.rates import Constant, Diurnal, FlashCrowd, Product, rate_from_dict
from traces.stats import trace_stats

QUICK = Dist(Family.CONSTANT, 1.0)  # one-second sessions: arrival tests need no lifecycle


def arrival_client(rate: float, cv: float, family: str = "gamma", **kw) -> ClientSpec:
    return ClientSpec("c", rate=rate, cv=cv, interarrival=family, lifetime=QUICK,
                      active=None, idle=None, **kw)


def open_times(df: pd.DataFrame) -> np.ndarray:
    return df.loc[df["event"] == "open", "time_s"].to_numpy()


# --- distributions -----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gamma", "weibull", "lognormal", "pareto"])
@pytest.mark.parametrize("cv", [0.5, 1.5])
def test_every_family_has_the_stated_mean_and_median(family, cv):
    d = Dist(family, mean=3.0, cv=cv)
    x = d.sample(np.random.default_rng(1), 400_000)
    assert x.min() > 0
    assert x.mean() == pytest.approx(3.0, rel=0.03)
    assert np.median(x) == pytest.approx(d.median, rel=0.02)


@pytest.mark.parametrize("family", ["gamma", "weibull", "lognormal"])
@pytest.mark.parametrize("cv", [0.5, 1.5])
def test_light_enough_families_have_the_stated_cv(family, cv):
    # Pareto is left out: with cv >= 0.5 its fourth moment is infinite and the sample
    # CV converges too slowly to check; its mean and median are checked above.
    x = Dist(family, mean=3.0, cv=cv).sample(np.random.default_rng(1), 400_000)
    assert x.std() / x.mean() == pytest.approx(cv, rel=0.03)


def test_weibull_shape_inverts_the_cv():
    assert weibull_shape(1.0) == pytest.approx(1.0, rel=1e-6)
    assert weibull_shape(0.5) > 1.0 > weibull_shape(2.0)


def test_a_cap_clips_samples():
    x = Dist("lognormal", 10.0, 3.0, max=20.0).sample(np.random.default_rng(0), 10_000)
    assert x.max() == 20.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"family": "zipf", "mean": 1.0}, "unknown distribution family 'zipf'"),
     ({"family": "gamma", "mean": 0.0}, "mean must be"),
     ({"family": "gamma", "mean": 1.0, "cv": -1.0}, "cv must be"),
     ({"family": "weibull", "mean": 1.0, "cv": 0.0}, "needs cv > 0")],
)
def test_bad_distributions_are_refused_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Dist(**kwargs)


# --- the arrival process -------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gamma", "weibull"])
@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_arrivals_reproduce_the_target_rate_and_cv(family, cv):
    rate, duration = 2.0, 10_000.0  # about 20,000 arrivals
    client = arrival_client(rate, cv, family)
    t = arrivals(client, WorkloadSpec((client,), duration), np.random.default_rng(7))
    expected = rate * duration
    # A renewal count has standard deviation about cv * sqrt(n): allow 4 of them.
    assert abs(len(t) - expected) < 4 * cv * math.sqrt(expected)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05 if cv <= 2 else 0.1)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(rate=st.floats(0.5, 5.0), cv=st.floats(0.3, 3.0),
       family=st.sampled_from(["gamma", "weibull"]), seed=st.integers(0, 2**32 - 1))
def test_any_target_rate_and_cv_is_reproduced(rate, cv, family, seed):
    n = 30_000  # expected arrivals: enough for a sample CV within 10%
    client = arrival_client(rate, cv, family)
    t = arrivals(client, WorkloadSpec((client,), n / rate), np.random.default_rng(seed))
    assert abs(len(t) - n) < 5 * cv * math.sqrt(n)  # 5 standard deviations of the count
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_a_diurnal_shape_moves_arrivals_to_the_peak():
    client = arrival_client(1.0, 1.0)
    spec = WorkloadSpec((client,), 86_400.0, rate=Diurnal(86_400.0, amplitude=0.6, peak_s=43_200.0))
    t = arrivals(client, spec, np.random.default_rng(0))
    assert len(t) == pytest.approx(86_400, rel=0.03)  # the shape has mean 1 over a day
    # Expected share in the middle half of the day: 1/2 + amplitude / pi.
    middle = np.mean((t >= 21_600) & (t < 64_800))
    assert middle == pytest.approx(0.5 + 0.6 / math.pi, abs=0.01)


def test_a_flash_crowd_multiplies_the_rate_while_it_holds():
    client = arrival_client(2.0, 1.0)
    crowd = FlashCrowd(start_s=1000.0, factor=5.0, rise_s=0.0, hold_s=1000.0, decay_s=0.0)
    t = arrivals(client, WorkloadSpec((client,), 3000.0, rate=crowd), np.random.default_rng(0))
    before = np.sum(t < 1000) / 1000.0
    during = np.sum((t >= 1000) & (t < 2000)) / 1000.0
    assert before == pytest.approx(2.0, rel=0.1)
    assert during == pytest.approx(10.0, rel=0.05)


def test_rate_windows_give_random_counts_and_carry_the_process_across_windows():
    n_windows, window = 200, 60.0
    windows = RateWindows((1.0,) * n_windows, (2.0,) * n_windows, ("gamma",) * n_windows, window)
    client = replace(arrival_client(1.0, 2.0), rate=windows)
    spec = WorkloadSpec((client,), n_windows * window)
    t = arrivals(client, spec, np.random.default_rng(3))
    counts = np.bincount((t // window).astype(int), minlength=n_windows)
    # Random, not fixed, counts per window; CV-2 gaps make them over-dispersed.
    assert counts.std() > math.sqrt(counts.mean())
    # No reset at window boundaries: the gaps keep the target CV across them.
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.1)


def test_a_window_with_zero_rate_has_no_arrivals():
    windows = RateWindows((1.0, 0.0, 1.0), (1.0, 1.0, 1.0), ("gamma", "gamma", "weibull"), 100.0)
    client = replace(arrival_client(1.0, 1.0), rate=windows)
    t = arrivals(client, WorkloadSpec((client,), 300.0), np.random.default_rng(0))
    assert not np.any((t >= 100) & (t < 200))
    assert np.sum(t < 100) > 50 and np.sum(t >= 200) > 50


def test_a_client_shape_shifts_only_that_client():
    day = 86_400.0
    night_owl = replace(arrival_client(0.2, 1.0), client_id="owl",
                        shape=Diurnal(day, amplitude=0.9, peak_s=0.0))
    early_bird = replace(arrival_client(0.2, 1.0), client_id="bird",
                         shape=Diurnal(day, amplitude=0.9, peak_s=day / 2))
    df = generate(WorkloadSpec((night_owl, early_bird), day))
    opens = df[df["event"] == "open"]
    noon = (opens["time_s"] > day / 4) & (opens["time_s"] < 3 * day / 4)
    share_at_noon = opens[noon].groupby("client_id").size() / opens.groupby("client_id").size()
    assert share_at_noon["bird"] > 0.7 > 0.3 > share_at_noon["owl"]


def test_total_rate_splits_the_load_by_weight():
    clients = (replace(arrival_client(1.0, 1.0), client_id="big", weight=3.0),
               replace(arrival_client(1.0, 1.0), client_id="small", weight=1.0))
    df = generate(WorkloadSpec(clients, 4000.0, total_rate=2.0))
    per_client = df[df["event"] == "open"].groupby("client_id").size()
    assert per_client["big"] / 4000.0 == pytest.approx(1.5, rel=0.08)
    assert per_client["small"] / 4000.0 == pytest.approx(0.5, rel=0.12)


# --- sessions ------------------------------------------------------------------------------


def test_sessions_alternate_active_and_idle_in_the_stated_proportion():
    client = ClientSpec("c", rate=0.05, lifetime=Dist("constant", 4000.0),
                        active=Dist("exponential", 30.0), idle=Dist("exponential", 10.0))
    df = generate(WorkloadSpec((client,), 20_000.0))
    validate(df)
    assert trace_stats(df).active_share == pytest.approx(0.75, abs=0.02)


def test_session_lifetimes_follow_the_lifetime_distribution():
    life = Dist("lognormal", 100.0, 1.0)
    client = ClientSpec("c", rate=1.0, lifetime=life)
    df = generate(WorkloadSpec((client,), 20_000.0))
    table = session_table(df)
    done = table[table["open_s"] < 20_000.0 - 2000.0]  # far enough from the end to close
    assert done["duration_s"].median() == pytest.approx(life.median, rel=0.05)


def test_the_mix_sets_model_and_chunk_shape_per_session():
    mix = (Variant("tiny", 12, 64, 64, 16, weight=3.0), Variant("wan-14b", 12, 480, 832, 16))
    df = generate(WorkloadSpec((ClientSpec("c", rate=1.0, mix=mix),), 2000.0))
    opens = df[df["event"] == "open"]
    assert set(opens["model"]) == {"tiny", "wan-14b"}
    assert (opens["model"] == "tiny").mean() == pytest.approx(0.75, abs=0.05)
    assert (opens.loc[opens["model"] == "wan-14b", "width"] == 832).all()
    assert df.loc[df["event"] != "open", ["model", "fps"]].isna().all().all()


def test_warmup_starts_the_trace_in_steady_state():
    client = ClientSpec("c", rate=1.0, lifetime=Dist("constant", 100.0),
                        active=Dist("constant", 10.0), idle=Dist("constant", 10.0))
    cold = generate(WorkloadSpec((client,), 300.0))
    warm = generate(WorkloadSpec((client,), 300.0, warmup_s=200.0))
    validate(warm)
    at_zero = warm[warm["time_s"] == 0.0]
    assert (cold["time_s"] == 0.0).sum() <= 1
    # About rate * lifetime = 100 sessions are open at 0, half of them idle (10 s / 10 s).
    assert (at_zero["event"] == "open").sum() == pytest.approx(100, abs=30)
    assert (at_zero["event"] == "idle").sum() == pytest.approx(50, abs=25)


def test_sessions_alive_at_the_end_close_at_the_end():
    client = ClientSpec("c", rate=1.0, lifetime=Dist("constant", 1000.0))
    df = generate(WorkloadSpec((client,), 100.0))
    assert (df.loc[df["event"] == "close", "time_s"] == 100.0).all()
    assert df["time_s"].max() == 100.0


# --- reproducibility -------------------------------------------------------------------------


SPEC = WorkloadSpec(
    (ClientSpec("a", rate=0.3, cv=2.0), ClientSpec("b", rate=0.2, interarrival="weibull", cv=3.0)),
    1800.0, rate=Diurnal(3600.0, 0.5), warmup_s=600.0, seed=11,
)


def test_the_same_spec_gives_the_identical_trace():
    pd.testing.assert_frame_equal(generate(SPEC), generate(SPEC))


def test_another_seed_gives_another_trace():
    assert not generate(SPEC).equals(generate(replace(SPEC, seed=12)))


def test_adding_a_client_leaves_the_others_unchanged():
    more = replace(SPEC, clients=(*SPEC.clients, ClientSpec("c", rate=1.0)))
    base, extended = generate(SPEC), generate(more)
    a_base = base[base["client_id"] == "a"].reset_index(drop=True)
    a_ext = extended[extended["client_id"] == "a"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a_base, a_ext)


# --- properties ---------------------------------------------------------------------------------

dists = st.builds(
    Dist,
    family=st.sampled_from(["constant", "exponential", "gamma", "weibull", "lognormal", "pareto"]),
    mean=st.floats(0.5, 300.0),
    cv=st.floats(0.2, 4.0),
    max=st.none() | st.floats(1.0, 1000.0),
)
windows = st.integers(1, 6).flatmap(lambda n: st.builds(
    RateWindows,
    rates=st.lists(st.sampled_from([0.0, 0.05, 0.5, 2.0]), min_size=n, max_size=n).map(tuple),
    cvs=st.lists(st.floats(0.01, 150.0), min_size=n, max_size=n).map(tuple),
    families=st.lists(st.sampled_from(["gamma", "weibull", "Gamma"]), min_size=n, max_size=n).map(tuple),
    window_s=st.sampled_from([7.0, 60.0, 600.0]),
))
clients = st.builds(
    lambda i, rate, cv, fam, life, period, mix_n: ClientSpec(
        f"c{i}", rate=rate, cv=1.0 if fam == "exponential" else cv, interarrival=fam,
        lifetime=life, active=period, idle=period,
        mix=tuple(Variant("tiny", 12, 64, 64, 16, weight=w + 1.0) for w in range(mix_n)),
    ),
    i=st.integers(0, 1000),
    rate=st.floats(0.0, 1.0) | windows,
    cv=st.floats(0.3, 6.0),
    fam=st.sampled_from(["gamma", "weibull", "exponential"]),
    life=dists,
    period=st.none() | dists,
    mix_n=st.integers(1, 3),
)
shapes = st.sampled_from([
    Constant(), Diurnal(600.0, 0.9, 100.0), FlashCrowd(50.0, 8.0, 10.0, 50.0, 30.0),
    Product((Diurnal(300.0, 0.5), FlashCrowd(0.0, 0.0, 0.0, 100.0, 0.0))),
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cs=st.lists(clients, min_size=1, max_size=3, unique_by=lambda c: c.client_id),
    duration=st.floats(1.0, 800.0),
    warmup=st.floats(0.0, 500.0),
    offset=st.floats(0.0, 5000.0),
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
)
def test_generated_traces_always_validate(cs, duration, warmup, offset, shape, seed):
    spec = WorkloadSpec(tuple(cs), duration, rate=shape, warmup_s=warmup, offset_s=offset,
                        seed=seed, grid_s=7.0)
    df = generate(spec)
    validate(df)
    assert df["time_s"].max() <= duration if len(df) else True
    assert set(df["client_id"]) <= {c.client_id for c in cs}
    assert (df["event"] == "open").sum() == (df["event"] == "close").sum() == df["session_id"].nunique()


# --- specs as data ------------------------------------------------------------------------------


def test_a_spec_round_trips_through_plain_data(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "duration_s: 600\nseed: 5\ntotal_rate: 0.5\n"
        "rate: [{kind: diurnal, period_s: 3600, amplitude: 0.5}, {kind: flash-crowd, start_s: 60}]\n"
        "client_defaults: {lifetime: {family: pareto, mean: 100, cv: 2}}\n"
        "clients:\n  - {id: x, replicas: 3, cv: 2.0, interarrival: weibull}\n"
        "  - {id: y, mix: [{model: wan-1.3b, chunk_frames: 12, height: 480, width: 832, fps: 16}]}\n"
    )
    spec = load_spec(path)
    assert [c.client_id for c in spec.clients] == ["x-0", "x-1", "x-2", "y"]
    assert spec.clients[0].lifetime == Dist("pareto", 100.0, 2.0)
    assert spec.clients[3].mix[0].model == "wan-1.3b"
    assert isinstance(spec.rate, Product) and spec.seed == 5
    validate(generate(spec))


@settings(max_examples=25, deadline=None)
@given(cs=st.lists(clients, min_size=1, max_size=3, unique_by=lambda c: c.client_id),
       shape=shapes, total=st.none() | st.floats(0.1, 10.0))
def test_specs_survive_plain_data_and_yaml(cs, shape, total):
    import yaml

    spec = WorkloadSpec(tuple(cs), 100.0, rate=shape, total_rate=total, warmup_s=5.0, seed=3)
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict(yaml.safe_load(yaml.safe_dump(spec_to_dict(spec)))) == spec


@pytest.mark.parametrize(
    ("data", "message"),
    [({"duration_s": 10, "clients": [{"id": "a", "colour": "red"}]}, "unknown client keys"),
     ({"duration_s": 10, "clients": [{"id": "a"}], "speed": 2}, "unknown workload keys"),
     ({"clients": [{"id": "a"}]}, "needs 'clients' and 'duration_s'"),
     ({"duration_s": 10, "clients": [{"id": "a"}, {"id": "a"}]}, "unique"),
     ({"duration_s": 10, "clients": [{"id": "a", "interarrival": "lognormal"}]}, "not one of"),
     ({"duration_s": 10, "clients": [{"id": "a", "interarrival": "exponential", "cv": 3}]},
      "exponential inter-arrivals have cv 1"),
     ({"duration_s": 10, "clients": [{"id": "a", "active": None}]}, "both active and idle"),
     ({"duration_s": 10, "rate": {"kind": "weekly"}, "clients": [{"id": "a"}]},
      "unknown rate kind 'weekly'")],
)
def test_bad_specs_are_refused_with_a_message(data, message):
    with pytest.raises(ValueError, match=message):
        spec_from_dict(data)


def test_rate_shapes_from_data():
    assert rate_from_dict(None) == Constant()
    assert rate_from_dict({"kind": "diurnal", "amplitude": 0.2}) == Diurnal(amplitude=0.2)
    t = np.array([0.0, 5.0, 10.0, 1e6])
    crowd = FlashCrowd(0.0, factor=3.0, rise_s=10.0, hold_s=10.0, decay_s=10.0)
    assert crowd(t).tolist() == pytest.approx([1.0, 2.0, 3.0, 1.0])
