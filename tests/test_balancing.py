"""The balancing core: priorities, smooth weighted round robin, draining and disabled backends, affinity."""

from collections import Counter
from dataclasses import dataclass

from kakuremichi.balancing import Balancer


@dataclass(frozen=True)
class B:
    id: str
    weight: int = 1
    priority: int = 0
    enabled: bool = True
    draining: bool = False


def everyone(_backend) -> bool:
    return True


def picks(balancer, backends, count, healthy=everyone, **options):
    return [balancer.choose(backends, healthy, **options).id for _ in range(count)]


def test_weights_share_the_load_smoothly():
    backends = [B("a", weight=3), B("b", weight=1)]
    sequence = picks(Balancer(), backends, 400)
    assert Counter(sequence) == {"a": 300, "b": 100}
    assert "aaaa" not in "".join(sequence)  # interleaved, never bunched


def test_the_lowest_priority_with_a_healthy_backend_wins():
    backends = [B("main1"), B("main2"), B("spare", priority=1)]
    assert set(picks(Balancer(), backends, 10)) == {"main1", "main2"}
    one_down = picks(Balancer(), backends, 10, healthy=lambda b: b.id != "main1")
    assert set(one_down) == {"main2"}
    all_down = picks(Balancer(), backends, 10, healthy=lambda b: b.priority == 1)
    assert set(all_down) == {"spare"}


def test_draining_disabled_and_zero_weight_backends_take_nothing_new():
    backends = [B("drained", draining=True), B("off", enabled=False), B("zero", weight=0), B("live", priority=5)]
    assert set(picks(Balancer(), backends, 10)) == {"live"}
    assert Balancer().choose(backends[:3], everyone) is None


def test_nothing_healthy_is_none_and_excluded_ids_are_skipped():
    backends = [B("a"), B("b")]
    assert Balancer().choose(backends, lambda b: False) is None
    assert set(picks(Balancer(), backends, 6, exclude={"a"})) == {"b"}


def test_affinity_keeps_a_key_on_its_backend_and_moves_only_the_keys_of_one_that_leaves():
    backends = [B("a"), B("b"), B("c")]
    balancer = Balancer()
    placed = {key: balancer.choose(backends, everyone, key=key).id for key in (b"%d" % n for n in range(300))}
    assert all(balancer.choose(backends, everyone, key=key).id == where for key, where in placed.items())
    assert set(Counter(placed.values())) == {"a", "b", "c"}
    without_b = {key: balancer.choose(backends, lambda b: b.id != "b", key=key).id for key in placed}
    assert all(without_b[key] == where for key, where in placed.items() if where != "b")


def test_affinity_follows_the_weights():
    backends = [B("a", weight=3), B("b", weight=1)]
    shares = Counter(Balancer().choose(backends, everyone, key=b"client%d" % n).id for n in range(4000))
    assert 0.70 < shares["a"] / 4000 < 0.80
