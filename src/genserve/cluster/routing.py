"""Which agent runs a job: the spec's score, and what it must get right.

score = 0.4 free-memory share + 0.3 (1 - busy/max_jobs) + 0.2 (1 - min(rtt/500 ms, 1)) + 0.1 speed

among agents that are alive (health within the timeout), serve the model and have room. Rules:
- a CPU-only agent (total_vram_mb 0) is scored and judged by its free RAM share, not by the VRAM
  it does not have (which would score it 0 and call it degraded forever);
- the load term counts running and queued jobs and the jobs just routed to the agent
  (reservations), so a burst between two heartbeats spreads over the agents instead of piling on
  one. A health update clears the reservations older than RESERVATION_GRACE_S: by then the client
  has connected and the update's running count holds the job. Room (running + queued +
  reservations < max_jobs) counts the reservations too: judged on reported counts alone, a burst
  between two heartbeats would all go to one idle agent past its max_jobs. The price is that a
  job that finished before the next update still holds its slot until that update;
- within TIE_MARGIN of the best score, an agent that already holds the model loaded wins (no
  load time); then the higher score; then the agent id, so the choice is reproducible;
- degraded agents (above 90 % memory or CPU) are chosen only when no healthy one has room;
  ``is_degraded`` is the one rule, which the agent's own GetStatus applies too.
Speed is the agent's measured tokens per second (its ``tokens_per_second`` capability) as a share
of the fastest candidate's, so it ranks agents without a machine-specific scale.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from genserve.errors import ErrorCode, GenserveError

MEMORY_WEIGHT = 0.4
LOAD_WEIGHT = 0.3
RTT_WEIGHT = 0.2
SPEED_WEIGHT = 0.1
RTT_CEILING_MS = 500.0
TIE_MARGIN = 0.02
RESERVATION_GRACE_S = 0.5
DEGRADED_SHARE = 0.10  # less than 10 % memory free = above 90 % used
DEGRADED_CPU = 90.0
LOADED_MODELS = "loaded_models"  # capability: comma-separated models held in memory
TOKENS_PER_SECOND = "tokens_per_second"  # capability: measured generation speed


def free_share(total_mb: int, free_mb: int | None) -> float:
    """Free share of the memory models run in; 1.0 before the first figures (an idle agent just
    started), 0.0 for a memory the agent does not have."""
    if free_mb is None:
        return 1.0
    return max(0.0, min(free_mb / total_mb, 1.0)) if total_mb > 0 else 0.0


def is_degraded(memory_share: float, cpu_percent: float, cpu_limit: float = DEGRADED_CPU) -> bool:
    """Under 10 % memory free or above ``cpu_limit`` CPU. Shared by the coordinator's routing and
    status and the agent's GetStatus, so that both sides call the same agent the same thing."""
    return memory_share < DEGRADED_SHARE or cpu_percent > cpu_limit


@dataclass
class AgentRecord:
    """What the coordinator knows of one agent: its registration and its latest health."""

    agent_id: str
    endpoint: str
    total_vram_mb: int
    total_ram_mb: int
    max_jobs: int
    supported_models: frozenset[str]
    capabilities: dict[str, str] = field(default_factory=dict)
    free_vram_mb: int | None = None  # None until the first health update
    free_ram_mb: int | None = None
    running_jobs: int = 0
    queued_jobs: int = 0
    cpu_percent: float = 0.0
    rtt_ms: float = 0.0
    reservations: list[float] = field(default_factory=list)  # monotonic times of jobs routed here
    last_seen: float = field(default_factory=time.monotonic)
    last_heartbeat: int = 0  # unix seconds of the last health update (0: none yet)

    @property
    def cpu_only(self) -> bool:
        return self.total_vram_mb <= 0

    def memory_share(self) -> float:
        """Free share of the memory models run in: VRAM on a GPU agent, RAM on a CPU-only one."""
        if self.cpu_only:
            return free_share(self.total_ram_mb, self.free_ram_mb)
        return free_share(self.total_vram_mb, self.free_vram_mb)

    @property
    def busy(self) -> int:
        return self.running_jobs + self.queued_jobs + len(self.reservations)

    def reserve(self, now: float | None = None) -> None:
        self.reservations.append(time.monotonic() if now is None else now)

    def settle(self, now: float) -> None:
        """A health update arrived: reservations older than the grace are in its counts now."""
        self.reservations = [r for r in self.reservations if now - r < RESERVATION_GRACE_S]

    def has_room(self) -> bool:
        """Jobs routed since the last update count: the agent has not reported them yet."""
        return self.busy < self.max_jobs

    def degraded(self, cpu_limit: float = DEGRADED_CPU) -> bool:
        return is_degraded(self.memory_share(), self.cpu_percent, cpu_limit)

    def status(self, cpu_limit: float = DEGRADED_CPU) -> str:
        return "degraded" if self.degraded(cpu_limit) else "healthy"

    def holds(self, model: str) -> bool:
        loaded = self.capabilities.get(LOADED_MODELS, "")
        return model in {name.strip() for name in loaded.split(",") if name.strip()}

    def tokens_per_second(self) -> float:
        try:
            speed = float(self.capabilities.get(TOKENS_PER_SECOND, "0"))
        except ValueError:
            return 0.0
        return speed if speed > 0 and speed != float("inf") else 0.0

    def alive(self, now: float, timeout_s: float) -> bool:
        return now - self.last_seen <= timeout_s


def score(agent: AgentRecord, fastest_tps: float) -> float:
    """The weighted score in [0, 1]; ``fastest_tps`` is the best speed among the candidates."""
    load = (
        1.0 - min(agent.busy / agent.max_jobs, 1.0) if agent.max_jobs > 0 else 0.0
    )  # busy: with reservations
    rtt = 1.0 - min(max(agent.rtt_ms, 0.0) / RTT_CEILING_MS, 1.0)
    speed = agent.tokens_per_second() / fastest_tps if fastest_tps > 0 else 0.0
    return MEMORY_WEIGHT * agent.memory_share() + LOAD_WEIGHT * load + RTT_WEIGHT * rtt + SPEED_WEIGHT * speed


@dataclass(frozen=True)
class Choice:
    agent: AgentRecord
    score: float


def choose(
    agents: Iterable[AgentRecord],
    model: str,
    timeout_s: float,
    now: float | None = None,
    cpu_limit: float = DEGRADED_CPU,
) -> Choice:
    """The best agent for ``model``; UNAVAILABLE naming the model when none is alive, serves it and
    has room (the message says which of the three failed, so an operator knows what to fix)."""
    current = time.monotonic() if now is None else now
    alive = [a for a in agents if a.alive(current, timeout_s)]
    serving = [a for a in alive if model in a.supported_models]
    if not serving:
        raise GenserveError(
            ErrorCode.UNAVAILABLE,
            f"model: no agent serves model {model!r} ({len(alive)} agent(s) alive)",
            field="model",
            model=model,
        )
    with_room = [a for a in serving if a.has_room()]
    if not with_room:
        raise GenserveError(
            ErrorCode.UNAVAILABLE,
            f"model: all {len(serving)} agent(s) serving model {model!r} are at max_jobs; retry later",
            field="model",
            model=model,
        )
    candidates = [a for a in with_room if not a.degraded(cpu_limit)] or with_room
    fastest = max(a.tokens_per_second() for a in candidates)
    scored = [(score(a, fastest), a) for a in candidates]
    best = max(s for s, _ in scored)
    contenders = [(s, a) for s, a in scored if s >= best - TIE_MARGIN]
    chosen_score, chosen = min(
        contenders, key=lambda pair: (not pair[1].holds(model), -pair[0], pair[1].agent_id)
    )
    return Choice(chosen, chosen_score)
