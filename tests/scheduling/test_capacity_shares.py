"""The rule that splits a model's slots between gateway processes."""
from gateway.relay.capacity_shares import MAX_ACCOUNTS, bounded, fair_allocation, lay, shares


def one(demand: int, account: str = "x", weight: float = 1.0, priority: int = 0):
    return {account: (demand, weight, priority)}


def test_alone_a_process_has_every_slot():
    assert shares(8, {"a": {}}) == {"a": 8}
    assert shares(8, {"a": one(50)}) == {"a": 8}
    assert lay([4, 4], 0, 8) == [4, 4]


def test_one_account_in_two_processes_splits_by_its_demand_there():
    assert shares(8, {"a": one(30), "b": one(10)}) == {"a": 6, "b": 2}
    split = shares(8, {"a": one(5), "b": one(5), "c": one(5)})
    assert sum(split.values()) == 8 and max(split.values()) - min(split.values()) <= 1
    # a holder with a little demand still gets a slot
    assert shares(8, {"a": one(100), "b": one(1)})["b"] == 1


def test_slots_are_shared_by_account_not_by_request_count():
    """Three heavy accounts queue 16 requests each, split over both processes; five light
    accounts send one request each, all to process a. Counted by requests a would get
    4 of 8 slots; by account each light user is due a whole slot."""
    heavy = {f"h{i}": (8, 1.0, 0) for i in range(3)}
    light = {f"l{i}": (1, 1.0, 0) for i in range(5)}
    split = shares(8, {"a": {**heavy, **light}, "b": dict(heavy)})
    assert split == {"a": 7, "b": 1}             # 5 light + half of 3 heavy slots = 6.5
    # weights: a weight-2 account is due twice a weight-1 one's slots
    parts = fair_allocation(6, {"gold": (10, 2.0, 0), "basic": (10, 1.0, 0)})
    assert parts == {"gold": 4.0, "basic": 2.0}
    # an account that asks for less than its part gets its demand; the rest is shared
    parts = fair_allocation(8, {"small": (1, 1.0, 0), "x": (10, 1.0, 0), "y": (10, 1.0, 0)})
    assert parts == {"small": 1.0, "x": 3.5, "y": 3.5}


def test_priority_bands_are_served_first_across_processes():
    split = shares(4, {"a": {"vip": (4, 1.0, 1)}, "b": {"std": (20, 1.0, 0)}})
    assert split == {"a": 4, "b": 0}       # strict: every slot is due to vip
    assert fair_allocation(4, {"vip": (4, 1.0, 1), "std": (20, 1.0, 0)}) == {"vip": 4.0, "std": 0.0}


def test_spare_slots_are_spread_so_an_idle_process_can_start_at_once():
    split = shares(8, {"a": one(2), "b": {}})
    assert split["a"] >= 2 and split["b"] >= 1 and sum(split.values()) == 8


def test_the_reported_accounts_are_bounded():
    many = {f"acct{i:05d}": (1 + i % 3, 1.0, 0) for i in range(MAX_ACCOUNTS * 4)}
    kept = bounded(many, "me")
    assert len(kept) == MAX_ACCOUNTS
    assert sum(d for d, _, _ in kept.values()) == sum(d for d, _, _ in many.values())
    assert bounded(one(3), "me") == one(3)


def test_processes_get_disjoint_slots_on_the_replicas():
    a, b = lay([2, 2], 0, 2), lay([2, 2], 2, 2)
    assert [x + y for x, y in zip(a, b)] == [2, 2] and a == b == [1, 1]
    assert lay([3, 1], 0, 3) == [2, 1] and lay([3, 1], 3, 1) == [1, 0]
