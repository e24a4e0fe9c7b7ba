"""Named scenarios and the ``turboserve trace`` commands."""

from __future__ import annotations

import argparse
import json
import re

import pandas as pd
import pytest

from traces.commands import main, register
from traces.importers import DataNotFoundError, data_dir
from traces.io import read_trace, validate, write_trace
from traces.scenarios import DESCRIPTIONS, SCENARIOS, scenario, scenario_spec, spec_path
from traces.stats import concurrency, trace_stats

SYNTHETIC = ["steady", "diurnal", "flash-crowd", "servegen-language-lite", "mixed-14b-share"]
FROM_DATA = [name for name in SCENARIOS if name not in SYNTHETIC]


def have_data() -> bool:
    try:
        data_dir()
    except DataNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(not have_data(), reason="shared trace data folder not available")


def test_the_issue_scenarios_are_all_named():
    for name in ("steady", "diurnal", "flash-crowd", "servegen-language",
                 "mooncake-conversation", "azure-conv"):
        assert name in SCENARIOS
    assert set(DESCRIPTIONS) == set(SCENARIOS)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_scenarios_are_valid_and_reproducible(name):
    df = scenario(name, duration_s=900.0, scale=0.3, seed=4)
    validate(df)
    assert df["time_s"].max() <= 900.0
    pd.testing.assert_frame_equal(df, scenario(name, duration_s=900.0, scale=0.3, seed=4))


@needs_data
@pytest.mark.parametrize("name", FROM_DATA)
def test_data_scenarios_are_valid(name):
    df = scenario(name, duration_s=1200.0, scale=0.3, seed=2)
    validate(df)
    assert df["time_s"].max() <= 1200.0
    assert df["session_id"].nunique() > 50


def test_scale_one_is_about_64_gpus_of_load():
    stats = trace_stats(scenario("steady"))
    assert 150 < stats.mean_active < 400  # "roughly 250 active sessions"


def test_scale_multiplies_the_sessions():
    one = scenario("steady", duration_s=1800.0)["session_id"].nunique()
    four = scenario("steady", duration_s=1800.0, scale=4.0)["session_id"].nunique()
    assert four / one == pytest.approx(4.0, rel=0.1)


def test_the_flash_crowd_raises_the_peak_over_the_steady_load():
    steady = trace_stats(scenario("steady", scale=0.5))
    crowd = trace_stats(scenario("flash-crowd", scale=0.5))
    assert crowd.peak_active > 1.5 * steady.peak_active


def test_model_override_sets_every_session():
    df = scenario("steady", duration_s=300.0, model="tiny")
    opens = df[df["event"] == "open"]
    assert set(opens["model"]) == {"tiny"} and set(opens["height"]) == {64}
    with pytest.raises(ValueError, match="unknown model preset 'sora'"):
        scenario("steady", model="sora")


@needs_data
def test_data_scenarios_longer_than_the_data_are_tiled():
    df = scenario("mooncake-conversation", duration_s=7200.0, scale=0.2)
    validate(df)
    assert df["time_s"].max() == 7200.0
    assert df["session_id"].str.endswith("@1").any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"name": "tsunami"}, "unknown scenario 'tsunami'"),
     ({"name": "steady", "duration_s": -1.0}, "duration_s must be > 0"),
     ({"name": "steady", "scale": 0.0}, "scale must be > 0")],
)
def test_bad_scenario_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        scenario(**kwargs)


@needs_data
def test_the_lite_servegen_spec_is_the_summary_of_the_data():
    import yaml

    from traces.importers import servegen_summary

    with open(spec_path("servegen-language-lite")) as f:
        shipped = yaml.safe_load(f)["clients"]
    assert shipped == servegen_summary("language/m-large")


def test_the_lite_servegen_scenario_keeps_the_daily_swing():
    df = scenario("servegen-language-lite", scale=0.5)
    assert trace_stats(df).clients == 11
    hourly = concurrency(df, 3600.0)["active"].to_numpy()[1:-1]
    assert hourly.max() > 2 * hourly.min()  # ServeGen's peak-to-trough is about 6


def test_synthetic_scenarios_have_spec_files_and_data_ones_do_not():
    assert spec_path("diurnal").exists()
    assert scenario_spec("diurnal", duration_s=60.0).duration_s == 60.0
    with pytest.raises(ValueError, match="built from data"):
        scenario_spec("azure-conv")


# --- the CLI --------------------------------------------------------------------------------


def test_register_adds_the_trace_group_to_a_parser():
    parser = argparse.ArgumentParser(prog="turboserve")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["trace", "generate", "--scenario", "steady", "--out", "x.parquet"])
    assert args.func.__name__ == "cmd_generate" and args.seed == 0


def test_generate_stats_convert_and_validate_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    assert main(["trace", "generate", "--scenario", "steady", "--duration", "300",
                 "--seed", "3", "--scale", "0.2", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    pd.testing.assert_frame_equal(
        read_trace(out), scenario("steady", duration_s=300.0, scale=0.2, seed=3)
    )
    plot = tmp_path / "t.png"
    assert main(["trace", "stats", str(out), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "peak_active" in table and plot.exists()
    assert main(["trace", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sessions"] == read_trace(out)["session_id"].nunique()
    assert main(["trace", "convert", str(out), str(tmp_path / "t.csv")]) == 0
    pd.testing.assert_frame_equal(read_trace(tmp_path / "t.csv"), read_trace(out))
    assert main(["trace", "validate", str(tmp_path / "t.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok:")


def test_generate_from_a_spec_file(tmp_path):
    out = tmp_path / "spec.csv"
    assert main(["trace", "generate", "--spec", str(spec_path("flash-crowd")),
                 "--duration", "200", "--out", str(out)]) == 0
    validate(read_trace(out))


def test_list_prints_every_scenario(capsys):
    assert main(["trace", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SCENARIOS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["trace", "generate", "--scenario", "nope", "--out", "x.csv"], "unknown scenario 'nope'"),
     (["trace", "stats", "missing.parquet"], "does not exist"),
     (["trace", "convert", "missing.csv", "x.txt"], "does not exist")],
)
def test_errors_end_the_command_with_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_an_invalid_trace_file_is_reported_with_its_row(tmp_path, capsys):
    df = scenario("steady", duration_s=60.0, scale=0.1)
    write_trace(df, tmp_path / "ok.csv")
    bad = pd.read_csv(tmp_path / "ok.csv").iloc[:-1]  # drop the last close
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["trace", "validate", str(tmp_path / "bad.csv")]) == 2
    assert re.match(r"error: row \d+ .*never closed", capsys.readouterr().err)


def test_the_turboserve_cli_runs_the_trace_group(tmp_path, capsys):
    cli = pytest.importorskip("framework.cli")
    assert cli.main(["trace", "list"]) == 0
    assert "steady" in capsys.readouterr().out
    assert cli.main(["trace", "stats", str(tmp_path / "missing.parquet")]) == 2
    assert "error: " in capsys.readouterr().err
