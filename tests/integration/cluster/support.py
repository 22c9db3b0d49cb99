"""Real cluster processes for the tests: ``genserve coordinator`` and ``genserve agent`` on free
loopback ports, each its own process, as a user starts them; their banners give the addresses."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import grpc

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc

COORDINATOR = re.compile(r"coordinator listening on (\S+:\d+)")
AGENT = re.compile(r"agent (\S+) serving on (\S+:\d+)")
MODEL = "tiny-chat"
# A stream that keeps the engine busy for seconds: the demo LLM continues this prompt greedily
# for all 4096 tokens (about 14 s on one CPU thread); short prompts end at EOS within a second.
LONG_PROMPT = "Once upon a time " * 1500
LONG_OPTIONS = {"greedy": "true"}


def genserve() -> str:
    return str(Path(sys.executable).with_name("genserve"))


class Process:
    """A genserve process whose stderr is collected; ``address`` comes from its banner.

    Every one started is kept in ``started``, so the cluster tests' autouse fixture stops what a
    test started (a restart included) however the test ends.
    """

    started: ClassVar[list[Process]] = []

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, banner: re.Pattern[str]) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [genserve(), *args], env=env, cwd=cwd, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.match: re.Match[str] | None = None
        self._banner = banner
        Process.started.append(self)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            found = self._banner.search(line)
            if found and self.match is None:
                self.match = found

    def wait_ready(self, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while self.match is None:
            assert self.process.poll() is None, f"{self.args} exited:\n{self.log}"
            assert time.monotonic() < deadline, f"{self.args} did not start:\n{self.log}"
            time.sleep(0.05)
        return self.match

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    return {**env, "GENSERVE_ENGINE__TORCH_THREADS": "1", **extra}


def start_coordinator(tmp: Path, port: int = 0, **env: str) -> Process:
    settings = {
        "GENSERVE_CLUSTER__KEY_FILE": str(tmp / "coordinator_key.pem"),
        "GENSERVE_CLUSTER__HEARTBEAT_INTERVAL_S": "1",
        "GENSERVE_CLUSTER__HEARTBEAT_TIMEOUT_S": "3",
        # The test agents share two cores with the test itself: CPU use says nothing about them.
        "GENSERVE_CLUSTER__DEGRADED_CPU_PERCENT": "100",
        **env,
    }
    return Process(["coordinator", "--port", str(port)], base_env(settings), tmp, COORDINATOR)


def start_agent(
    tmp: Path, coordinator: str, agent_id: str, models: Path, port: int = 0, **env: str
) -> Process:
    settings = {
        "GENSERVE_MODELS__DIR": str(models),
        "GENSERVE_CLUSTER__RECONNECT_INITIAL_S": "0.2",
        "GENSERVE_CLUSTER__RECONNECT_MAX_S": "1",
        "GENSERVE_CLUSTER__AGENT_STATE_DIR": str(tmp / "agent-state" / agent_id),
        **env,
    }
    args = ["agent", "--coordinator", coordinator, "--port", str(port), "--agent-id", agent_id]
    return Process(args, base_env(settings), tmp, AGENT)


@contextmanager
def processes(*started: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for p in started:
            p.stop(signal.SIGKILL)


def coordinator_stub(address: str) -> rpc.CoordinatorServiceStub:
    return rpc.CoordinatorServiceStub(grpc.insecure_channel(address))


def agent_stub(address: str) -> rpc.AgentServiceStub:
    return rpc.AgentServiceStub(grpc.insecure_channel(address))


def status(stub: rpc.CoordinatorServiceStub) -> dict[str, pb.AgentStatus]:
    answer = stub.QuerySystemStatus(pb.StatusRequest(include_agents=True), timeout=10)
    return {a.agent_id: a for a in answer.agents}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took; fails naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def stream(
    agent: str, token: str, prompt: str = "Once upon a time", **fields: object
) -> list[pb.StreamResponse]:
    options = fields.pop("options", {})
    request = pb.StreamRequest(
        session_token=token,
        model=str(fields.pop("model", MODEL)),
        prompt=prompt,
        stream=bool(fields.pop("stream", True)),
        options=options,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )
    return list(agent_stub(agent).StreamInference(request, timeout=60))


def ask(
    stub: rpc.CoordinatorServiceStub, model: str = MODEL, client: str = "test-client", wait_s: float = 5.0
) -> pb.InferenceResponse:
    """RequestInference; while every agent is at max_jobs, asked again for up to ``wait_s``.

    A routed job holds its agent's slot until the agent's next health update (one second here),
    so tests that route one job after another wait for a slot as a client would; tests of the
    refusal itself pass ``wait_s=0``.
    """
    request = pb.InferenceRequest(client_id=client, model=model, prompt="hi")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return stub.RequestInference(request, timeout=10)
        except grpc.RpcError as exc:
            full = exc.code() == grpc.StatusCode.UNAVAILABLE and "at max_jobs" in str(exc.details())
            if not full or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def long_request(token: str) -> pb.StreamRequest:
    return pb.StreamRequest(
        session_token=token,
        model=MODEL,
        prompt=LONG_PROMPT,
        max_tokens=4096,
        stream=True,
        options=LONG_OPTIONS,
    )


class Reader:
    """Reads a server stream on a thread: its pieces (or its RpcError) arrive in ``items``."""

    def __init__(self, call: Iterator[pb.StreamResponse]) -> None:
        self.call = call
        self.items: queue.Queue[pb.StreamResponse | grpc.RpcError] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for piece in self.call:
                self.items.put(piece)
        except grpc.RpcError as exc:
            self.items.put(exc)

    def cancel(self) -> None:
        self.call.cancel()  # type: ignore[attr-defined]
        self.thread.join(10)


def agent_key_token(key_file: Path, agent_id: str, model: str = MODEL, **kwargs: float) -> str:
    """A token signed with the coordinator's own key file, as the coordinator would issue it."""
    from genserve.cluster.auth import TokenIssuer, load_or_create_key

    return (
        TokenIssuer(load_or_create_key(key_file), "genserve-coordinator", 60)
        .issue(agent_id, "test-client", model, **kwargs)
        .token
    )
