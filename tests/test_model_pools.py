"""What ``Server.local(models=...)`` asks for and what ``open`` refuses (framework.model_pools, no cluster)."""

from __future__ import annotations

import pytest

from framework.errors import (
    CapacityExceeded,
    InvalidRequest,
    ModelNotServed,
    UnknownModel,
)
from framework.model_pools import check_served, models_of, pool_plan, worker_resources


def test_a_list_gives_every_worker_every_listed_model():
    assert pool_plan(["tiny", "tiny-trained"], 3) == [frozenset({"tiny", "tiny-trained"})] * 3


def test_a_dict_gives_one_pool_per_model_of_that_many_workers():
    assert pool_plan({"tiny": 2, "tiny-trained": 1}, None) == [
        frozenset({"tiny"}), frozenset({"tiny"}), frozenset({"tiny-trained"})]


@pytest.mark.parametrize("models,n,error,match", [
    ({"tiny": 2}, 3, InvalidRequest, "asks for 2 workers"),
    ({"tiny": 0}, None, InvalidRequest, "int >= 1"),
    ([], 2, InvalidRequest, "names no model"),
    (["tiny", "no-such-model"], 1, UnknownModel, "no-such-model"),
    (["tiny"], None, InvalidRequest, "needs n_workers"),
])
def test_a_bad_pool_request_is_a_typed_error_naming_what_is_wrong(models, n, error, match):
    with pytest.raises(error, match=match):
        pool_plan(models, n)


def test_a_workers_models_round_trip_through_its_resources_and_other_resources_are_ignored():
    resources = {"GPU": 1, **worker_resources(["tiny", "wan-1.3b"])}
    assert models_of(resources) == frozenset({"tiny", "wan-1.3b"})
    assert models_of({"GPU": 1}) is None and models_of(None) is None


def test_open_is_refused_only_when_no_worker_serves_the_model():
    pools = {"w1": frozenset({"tiny"}), "w2": frozenset({"tiny-trained"})}
    check_served("tiny", pools)
    check_served("wan-1.3b", {**pools, "w3": None})  # a worker without pools serves any model
    check_served("wan-1.3b", {})  # no worker yet: the autoscaler may still bring one
    with pytest.raises(ModelNotServed, match=r"served: \['tiny', 'tiny-trained'\].*model-wan-1.3b") as err:
        check_served("wan-1.3b", pools)
    assert isinstance(err.value, CapacityExceeded)


def test_a_named_worker_must_serve_the_model():
    pools = {"w1": frozenset({"tiny"})}
    check_served("tiny", pools, worker="w1")
    with pytest.raises(ModelNotServed, match="worker 'w1' does not serve model 'tiny-trained'"):
        check_served("tiny-trained", pools, worker="w1")
