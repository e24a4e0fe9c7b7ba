"""The control loop's worker fleet (framework/fleet.py), alone: plain bookkeeping, no cluster.

A worker is asked for, joins, gets ready, retires, drains and is released; a drained
worker not closed yet comes back into service for a scale-out or a recovery. The loop
around it: ``tests/test_control_loop.py``; admission's take-back: ``tests/test_admission_*.py``.
"""

from __future__ import annotations

import doctest

from framework import fleet as fleet_module
from framework.fleet import WorkerFleet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_docstring_example_runs():
    assert doctest.testmod(fleet_module).failed == 0


def test_a_worker_costs_from_its_join_to_its_release():
    clock = Clock()
    fleet = WorkerFleet(clock, ["a"])
    clock.now = 105.0
    fleet.joined("b")
    clock.now = 112.5
    fleet.left("a")
    fleet.left("a")  # a second report does not move the end
    clock.now = 120.0
    assert fleet.log() == [{"worker": "a", "started_s": 100.0, "released_s": 112.5},
                           {"worker": "b", "started_s": 105.0, "released_s": None}]
    assert fleet.joined_at("b", default=0.0) == 105.0 and fleet.joined_at("c", default=7.0) == 7.0


def test_the_start_up_time_runs_from_the_scale_out_to_each_ready_worker_until_the_target_is_warm():
    clock = Clock()
    fleet = WorkerFleet(clock, ["a"])
    fleet.ready(warm=1)
    assert fleet.startup_s == []  # no scale-out asked
    fleet.scale_to(3)
    clock.now = 104.0
    fleet.ready(warm=2)
    clock.now = 106.0
    fleet.ready(warm=3)
    clock.now = 200.0
    fleet.ready(warm=3)  # a restart after the scale-out ended
    assert fleet.startup_s == [4.0, 6.0]
    fleet.scale_to(2)  # a scale-in starts no clock
    fleet.ready(warm=2)
    assert fleet.startup_s == [4.0, 6.0]


def test_starting_is_the_target_beyond_the_workers_serving():
    fleet = WorkerFleet(Clock(), ["a", "b"])
    assert fleet.starting(["a", "b"]) == 0  # no target: nothing asked for
    fleet.scale_to(4)
    assert fleet.starting(["a", "b"]) == 2
    fleet.retire("b")
    assert fleet.serving(["a", "b"]) == 1 and fleet.starting(["a", "b"]) == 3
    fleet.scale_to(1)
    assert fleet.starting(["a", "b"]) == 0


def test_a_drained_worker_is_offered_for_closing_once_it_holds_nothing_and_leaves_every_set_when_released():
    fleet = WorkerFleet(Clock(), ["a", "b"])
    fleet.retire("b")
    assert fleet.to_close(busy=set()) == []  # still draining
    fleet.drain_done("b")
    assert fleet.to_close(busy={"b"}) == [] and fleet.to_close(busy={"a"}) == ["b"]
    fleet.left("b")
    assert fleet.to_close(busy=set()) == [] and "b" not in fleet.retiring


def test_a_failed_drain_keeps_the_worker_in_service():
    fleet = WorkerFleet(Clock(), ["a"])
    fleet.retire("a")
    fleet.drain_failed("a")
    assert fleet.retiring == set() and fleet.drained == set() and fleet.serving(["a"]) == 1


def test_take_back_and_put_back_are_inverse():
    fleet = WorkerFleet(Clock(), ["a", "b"])
    for w in ("a", "b"):
        fleet.retire(w)
        fleet.drain_done(w)
    fleet.retiring.discard("b")  # drained, not retiring (a drain the loop did not start)
    assert fleet.take_back("a") is True and fleet.take_back("b") is False
    assert fleet.drained == set() and fleet.retiring == set()
    fleet.put_back("a", True)
    fleet.put_back("b", False)
    assert fleet.drained == {"a", "b"} and fleet.retiring == {"a"}


def test_a_scale_out_keeps_drained_workers_up_to_the_target_not_those_being_closed():
    fleet = WorkerFleet(Clock(), ["a", "b", "c", "d"])
    for w in ("b", "c", "d"):
        fleet.retire(w)
        fleet.drain_done(w)
    fleet.scale_to(3)
    assert fleet.keep_drained(["a", "b", "c", "d"], closing={"b"}) == ["c", "d"]
    assert fleet.drained == {"b"} and fleet.retiring == {"b"} and fleet.serving(["a", "b", "c", "d"]) == 3
    fleet.scale_to(4)
    assert fleet.keep_drained(["a", "b", "c", "d"], closing={"b"}) == []  # the only one left is being closed
