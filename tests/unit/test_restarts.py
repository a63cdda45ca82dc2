"""The run command's restart policy: a pause that doubles with each recent crash, forgiveness after a
quiet while, and giving up on a process that keeps crashing."""

from __future__ import annotations

from devstack.restarts import RestartPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_pause_doubles_up_to_its_cap_then_the_policy_gives_up() -> None:
    clock = Clock()
    policy = RestartPolicy(max_crashes=6, window_s=300, first_pause_s=1, max_pause_s=10, clock=clock)
    pauses = []
    for _ in range(6):
        pauses.append(policy.crashed())
        clock.now += 1
    assert pauses == [1, 2, 4, 8, 10, 10]
    assert policy.crashed() is None, "the seventh crash within the window: it keeps crashing"


def test_crashes_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    policy = RestartPolicy(max_crashes=2, window_s=60, clock=clock)
    assert policy.crashed() == 1
    assert policy.crashed() == 2
    clock.now += 61
    assert policy.crashed() == 1, "a process that ran a while starts over from the shortest pause"
