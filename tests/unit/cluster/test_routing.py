"""The routing score and choice: the original's weights, with its defects fixed."""

from __future__ import annotations

import pytest

from genserve.cluster.routing import AgentRecord, choose, free_share, is_degraded, score
from genserve.errors import ErrorCode, GenserveError

NOW = 1000.0


def agent(agent_id: str, **overrides: object) -> AgentRecord:
    base: dict[str, object] = dict(
        agent_id=agent_id,
        endpoint=f"{agent_id}:1",
        total_vram_mb=10_000,
        total_ram_mb=32_000,
        max_jobs=4,
        supported_models=frozenset({"m"}),
        free_vram_mb=5_000,
        free_ram_mb=16_000,
        last_seen=NOW,
    )
    base.update(overrides)
    return AgentRecord(**base)  # type: ignore[arg-type]


def test_score_is_the_weighted_sum() -> None:
    a = agent("a", free_vram_mb=5_000, running_jobs=1, rtt_ms=250, capabilities={"tokens_per_second": "10"})
    # 0.4 * 0.5 + 0.3 * (1 - 1/4) + 0.2 * (1 - 250/500) + 0.1 * (10/20)
    assert score(a, fastest_tps=20) == pytest.approx(0.2 + 0.225 + 0.1 + 0.05)
    slow_link = agent("b", rtt_ms=5_000)  # beyond 500 ms counts as 500 ms, never negative
    assert score(slow_link, 0) == pytest.approx(0.4 * 0.5 + 0.3 + 0.0)


def test_cpu_only_agent_is_scored_by_ram_and_not_degraded() -> None:
    cpu = agent("cpu", total_vram_mb=0, free_vram_mb=0, total_ram_mb=32_000, free_ram_mb=24_000)
    assert cpu.memory_share() == pytest.approx(0.75)
    assert not cpu.degraded() and cpu.status() == "healthy"
    gpu_full = agent("gpu", free_vram_mb=500)
    assert gpu_full.degraded()


def test_choice_follows_load_memory_and_model() -> None:
    idle = agent("idle")
    busy = agent("busy", running_jobs=3)
    other_model = agent("other", supported_models=frozenset({"x"}), free_vram_mb=10_000)
    assert choose([busy, idle, other_model], "m", 30, now=NOW).agent is idle
    assert choose([busy, idle, other_model], "x", 30, now=NOW).agent is other_model


def test_routed_jobs_count_until_a_later_health_update() -> None:
    a, b = agent("a"), agent("b")
    first = choose([a, b], "m", 30, now=NOW).agent
    first.reserve(now=NOW)
    second = choose([a, b], "m", 30, now=NOW).agent
    assert {first.agent_id, second.agent_id} == {"a", "b"}
    first.settle(NOW + 0.1)  # an update sent right after the routing may not hold the job yet
    assert first.busy == 1
    first.settle(NOW + 1.0)
    assert first.busy == 0


def test_a_burst_never_goes_past_max_jobs() -> None:
    """Jobs routed since the last update take room: an idle agent with max_jobs 1 gets one job."""
    one = agent("one", max_jobs=1)
    assert choose([one], "m", 30, now=NOW).agent is one
    one.reserve(now=NOW)
    assert not one.has_room()
    with pytest.raises(GenserveError, match="max_jobs") as info:
        choose([one], "m", 30, now=NOW)
    assert info.value.code is ErrorCode.UNAVAILABLE
    other = agent("other", max_jobs=1, free_vram_mb=100)  # worse score, but it has room
    assert choose([one, other], "m", 30, now=NOW).agent is other
    one.settle(NOW + 1.0)  # the next update after the grace holds the job (or says it is over)
    assert one.has_room()


def test_agent_holding_the_model_wins_a_tie() -> None:
    cold = agent("a-cold")
    warm = agent("b-warm", capabilities={"loaded_models": "m,other"})
    assert choose([cold, warm], "m", 30, now=NOW).agent is warm
    # A clearly better score still wins over a loaded model.
    much_freer = agent("c-free", free_vram_mb=10_000)
    assert choose([cold, warm, much_freer], "m", 30, now=NOW).agent is much_freer


def test_no_agent_full_agents_and_dead_agents_are_unavailable() -> None:
    with pytest.raises(GenserveError) as info:
        choose([agent("a")], "missing-model", 30, now=NOW)
    assert info.value.code is ErrorCode.UNAVAILABLE and "missing-model" in info.value.message
    full = agent("full", running_jobs=2, queued_jobs=2)
    with pytest.raises(GenserveError, match="max_jobs"):
        choose([full], "m", 30, now=NOW)
    nearly = agent("nearly", running_jobs=2, queued_jobs=1)
    nearly.reserve(now=NOW)
    with pytest.raises(GenserveError, match="max_jobs"):
        choose([nearly], "m", 30, now=NOW)
    dead = agent("dead", last_seen=NOW - 31)
    with pytest.raises(GenserveError, match="0 agent"):
        choose([dead], "m", 30, now=NOW)


def test_degraded_agents_only_when_no_healthy_one_has_room() -> None:
    hot = agent("hot", cpu_percent=97.0, free_vram_mb=10_000)
    cool = agent("cool", running_jobs=3)
    assert choose([hot, cool], "m", 30, now=NOW).agent is cool
    cool.running_jobs = 4
    assert choose([hot, cool], "m", 30, now=NOW).agent is hot
    cool.running_jobs = 0
    assert choose([hot, cool], "m", 30, now=NOW, cpu_limit=100).agent is hot  # CPU not counted


def test_one_degraded_rule() -> None:
    assert is_degraded(0.5, 91.0) and not is_degraded(0.5, 90.0)
    assert is_degraded(0.09, 0.0) and not is_degraded(0.1, 0.0)
    assert not is_degraded(0.5, 99.0, cpu_limit=100)
    assert free_share(1000, None) == 1.0 and free_share(0, 0) == 0.0 and free_share(1000, 250) == 0.25


def test_speed_counts_relative_to_the_fastest() -> None:
    fast = agent("b-fast", capabilities={"tokens_per_second": "40"})
    slow = agent("a-slow", capabilities={"tokens_per_second": "4"}, free_vram_mb=5_100)
    assert choose([fast, slow], "m", 30, now=NOW).agent is fast
    nonsense = agent("n", capabilities={"tokens_per_second": "fast"})
    assert nonsense.tokens_per_second() == 0.0
