"""The rule that splits a model's slots between gateway processes."""
from gateway.relay.capacity_shares import replica_slots, shares


def test_alone_a_process_has_every_slot():
    assert shares(8, {"a": 0}) == {"a": 8}
    assert shares(8, {"a": 50}) == {"a": 8}
    assert replica_slots([4, 4], {"a": 3}, "a") == [4, 4]


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
    demands = {"a": 10, "b": 10}
    a = replica_slots([2, 2], demands, "a")
    b = replica_slots([2, 2], demands, "b")
    assert [x + y for x, y in zip(a, b)] == [2, 2] and sum(a) == sum(b) == 2
