"""The rule that splits a model's slots between gateway processes."""
from gateway.relay.capacity_shares import lay, shares


def test_alone_a_process_has_every_slot():
    assert shares(8, {"a": 0}) == {"a": 8}
    assert shares(8, {"a": 50}) == {"a": 8}
    assert lay([4, 4], 0, 8) == [4, 4]


def test_under_backlog_slots_follow_demand_and_sum_to_capacity():
    assert shares(8, {"a": 30, "b": 10}) == {"a": 6, "b": 2}
    split = shares(8, {"a": 5, "b": 5, "c": 5})
    assert sum(split.values()) == 8 and max(split.values()) - min(split.values()) <= 1
    # a holder with a little demand still gets a slot
    assert shares(8, {"a": 100, "b": 1})["b"] == 1


def test_spare_slots_are_spread_so_an_idle_process_can_start_at_once():
    split = shares(8, {"a": 2, "b": 0})
    assert split["a"] >= 2 and split["b"] >= 1 and sum(split.values()) == 8


def test_processes_get_disjoint_slots_on_the_replicas():
    a, b = lay([2, 2], 0, 2), lay([2, 2], 2, 2)
    assert [x + y for x, y in zip(a, b)] == [2, 2] and a == b == [1, 1]
    assert lay([3, 1], 0, 3) == [2, 1] and lay([3, 1], 3, 1) == [1, 0]
