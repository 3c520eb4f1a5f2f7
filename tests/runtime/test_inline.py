"""The inline rule without a server: a short pass at load, then the passes as served decide."""

from __future__ import annotations

from torchwire.server.runtime.inline import InlineRule

BOUND = 100_000  # ns


def test_a_pass_measured_short_at_load_runs_inline_and_a_long_one_does_not() -> None:
    short, long = InlineRule(BOUND), InlineRule(BOUND)
    short.warmed([30_000, 20_000, 400_000])  # the fastest counts: a neighbour only slows a pass down
    long.warmed([150_000, 140_000])
    assert short.allowed and short.warm_ns == 20_000
    assert not long.allowed


def test_the_passes_as_served_decide_once_there_are_enough() -> None:
    rule = InlineRule(BOUND)
    rule.warmed([20_000])
    for _ in range(7):  # too few to decide: the load-time measurement still does
        rule.record(5 * BOUND)
    assert rule.allowed
    rule.record(5 * BOUND)
    assert not rule.allowed  # the model became slow: back to the instance threads
    for _ in range(16):  # a core that slept makes a tiny pass slower: up to twice the bound is fine
        rule.record(int(1.5 * BOUND))
    assert rule.allowed


def test_a_probe_slowed_by_models_loading_beside_it_is_overruled_by_service() -> None:
    rule = InlineRule(BOUND)
    rule.warmed([6_000_000] * 3)
    assert not rule.allowed
    for _ in range(8):
        rule.record(120_000)
    assert rule.allowed


def test_one_pass_ten_times_over_the_bound_turns_it_off_for_good() -> None:
    rule = InlineRule(BOUND)
    rule.warmed([20_000])
    assert not rule.record(9 * BOUND) and rule.allowed  # slow, but within ten times: one of sixteen
    assert rule.record(11 * BOUND)  # the pass that turned it off says so, once
    assert not rule.allowed and not rule.record(11 * BOUND)
    for _ in range(32):
        rule.record(20_000)
    assert not rule.allowed  # a model whose cost depends on its data never runs on the loop again
