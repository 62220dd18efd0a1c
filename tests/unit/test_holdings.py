"""Holdings: which fencing token a store's writes for a task carry, and when it is dropped."""

from __future__ import annotations

from durable.leases import Holdings
from durable.states import TaskState


def test_a_lost_task_stays_fenced_by_its_last_token_until_released() -> None:
    holdings = Holdings()
    holdings.hold_fence("t1", "w1", 4)
    lost = holdings.settle("w1", {"t1": 4}, {"t1": ("w2", 5)})
    assert lost == {"t1"}
    assert holdings.held_by("w1") == {}
    assert holdings.fence("t1") == 4  # late writes still fail against the new token


def test_forgetting_a_released_task_leaves_nothing_behind() -> None:
    holdings = Holdings()
    for number in range(1000):
        holdings.hold_fence(f"t{number}", "w1", 1)
        holdings.let_go(f"t{number}")
        holdings.forget(f"t{number}")
    assert [holdings.fence(f"t{number}") for number in (0, 999)] == [None, None]
    assert vars(holdings) == {"_held": {}, "_retired": {}}


def test_an_ended_task_needs_no_token() -> None:
    holdings = Holdings()
    holdings.hold_fence("t1", "w1", 2)
    holdings.after_move("t1", TaskState.COMPLETED, {}, 2)
    assert holdings.fence("t1") is None


def test_a_newer_token_for_the_same_owner_is_not_a_loss() -> None:
    holdings = Holdings()
    holdings.hold_fence("t1", "w1", 2)
    assert holdings.settle("w1", {"t1": 2}, {"t1": ("w1", 3)}) == set()
    assert holdings.fence("t1") == 2
