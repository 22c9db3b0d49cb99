"""The bridge's queue is bounded, fair between clients, and never stuck.

- ComfyUI's API (``/comfy/queue`` listing, clear, delete, ``/comfy/interrupt``, ``/comfy/history``)
  does not reach the bridge's jobs on this server's runner: a clear while a bridge job waits
  used to leave that job ``running`` forever, holding a slot.
- A prompt that vanishes from a backend (taken out of this runner's queue, or cleared on a remote
  genserve) puts its job back in the queue; the job then runs to its end.
- A client may have ``bridge.max_queued_per_client`` jobs waiting and the bridge
  ``bridge.max_queued`` in all; past either the answer is 429 with ``Retry-After`` in the bridge's
  ``{"detail"}`` shape. Waiting jobs leave round-robin across clients.
- Identical jobs each get their own files: the runner's cache never reuses a saved file for a
  bridge job, whose files the bridge deletes once collected.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from genserve.storage.jobs import JobState, JobStore
from genserve.workflows.demo import demo_workflow
from tests.conftest import small_settings
from tests.integration.bridge_support import SLOW, multipart_files, write_bridge_catalog
from tests.integration.conftest import LiveServer, live_server, make_data_root, wait_for
from tests.integration.rest.test_bridge_backends import genserve_backends

LANE = "workflows"  # the local runner's engine lane


def submit(client: httpx.Client, client_id: str, seconds: float, seed: int = 1) -> httpx.Response:
    body = {"workflow": SLOW, "3/seed": seed, "90/seconds": seconds}
    return client.post("/generate-based-workflow", params={"clientId": client_id}, json=body)


def info(client: httpx.Client, client_id: str) -> dict[str, str]:
    return dict(client.get("/execution-info", params={"clientId": client_id}).json())


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    wait_for(lambda: condition() or time.sleep(0.05), timeout, what)


def wait_done(client: httpx.Client, client_id: str, timeout: float = 90) -> None:
    wait_until(
        lambda: info(client, client_id)["status"] in ("closed", "error"), timeout, f"{client_id}'s end"
    )
    assert info(client, client_id)["details"] == "Execution is done", info(client, client_id)


def take_png(client: httpx.Client, client_id: str) -> None:
    response = client.get("/history", params={"clientId": client_id})
    assert response.status_code == 200, (client_id, response.status_code, response.headers)
    ((_, content_type, data),) = multipart_files(response).values()
    assert content_type == "image/png"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"


def bridge_server(models: Path, data: Path, **env: str) -> Any:
    """The bridge in-process over ``data`` with the slow alias in its catalog."""
    write_bridge_catalog(data)
    return live_server(small_settings(models, data, **env), data)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[LiveServer]:
    """The local runner as the one backend, two jobs handed to it at once (one runs, one waits)."""
    data = make_data_root(tmp_path_factory.mktemp("bridge-queue") / "data", demo_images)
    with bridge_server(demo_models, data) as live:
        yield live


def lane_jobs(server: LiveServer) -> list[Any]:
    return server.runtime.engine.jobs(LANE)


def test_the_comfyui_api_cannot_list_clear_or_interrupt_bridge_jobs(server: LiveServer) -> None:
    with server.client() as client:
        assert submit(client, "first", 3.0).status_code == 200
        assert submit(client, "second", 0.5).status_code == 200
        wait_until(lambda: len(lane_jobs(server)) == 2, 60, "both bridge prompts on the runner")
        own = client.post("/comfy/prompt", json={"prompt": demo_workflow("text-to-image")})
        assert own.status_code == 200, own.text
        own_id = own.json()["prompt_id"]

        listed = client.get("/comfy/queue").json()
        ids = [entry[1] for entry in listed["queue_running"] + listed["queue_pending"]]
        assert ids == [own_id], listed  # a ComfyUI client sees its own prompt, never a bridge job

        assert client.post("/comfy/queue", json={"clear": True}).status_code == 200
        assert client.post("/comfy/interrupt", json={}).status_code == 200
        assert client.post("/comfy/history", json={"clear": True}).status_code == 200
        assert client.get("/comfy/queue").json() == {"queue_running": [], "queue_pending": []}
        assert len(lane_jobs(server)) == 2, "the clear took only the ComfyUI client's own prompt"

        for client_id in ("first", "second"):
            wait_done(client, client_id)
            take_png(client, client_id)
        assert lane_jobs(server) == []


def test_a_prompt_gone_from_the_local_queue_is_run_again(server: LiveServer) -> None:
    prompts = server.server.web.prompts
    assert prompts is not None
    with server.client() as client:
        assert submit(client, "runs", 2.0).status_code == 200
        assert submit(client, "vanishes", 0.5).status_code == 200
        wait_until(lambda: len(lane_jobs(server)) == 2, 60, "both bridge prompts on the runner")
        # Whatever takes a waiting prompt out of the runner's queue (here, its own owner's call),
        # the bridge sees it gone and queues the job again.
        assert prompts.delete_queued(None, include_private=True) == 1
        for client_id in ("runs", "vanishes"):
            wait_done(client, client_id)
            take_png(client, client_id)
        store = server.server.web.bridge.store  # type: ignore[union-attr]
        assert [j.state for j in store.jobs_for_client("vanishes")] == [JobState.DONE]


def test_identical_jobs_each_get_their_own_image(server: LiveServer) -> None:
    """The runner's output cache must not hand one job's saved file to the next identical job:
    the bridge deletes a job's files once it has collected them, so the second would get none."""
    with server.client() as client:
        for client_id in ("twin-a", "twin-b", "twin-c"):
            assert submit(client, client_id, 0.0, 77).status_code == 200
        for client_id in ("twin-a", "twin-b", "twin-c"):
            wait_done(client, client_id)
            take_png(client, client_id)


@pytest.mark.slow
def test_a_prompt_cleared_on_a_remote_backend_is_run_again(
    demo_models: Path, demo_images: Path, tmp_path: Path
) -> None:
    back_data = make_data_root(tmp_path / "back" / "data", demo_images)
    bridge_data = make_data_root(tmp_path / "bridge" / "data", demo_images)
    with genserve_backends(demo_models, back_data) as (back,):
        backends = f'[{{name: back, url: "{back.comfy}", max_inflight: 2}}]'
        env = {"GENSERVE_BRIDGE__BACKENDS": backends, "GENSERVE_BRIDGE__PROBE_INTERVAL_S": "0.5"}
        with bridge_server(demo_models, bridge_data, **env) as bridge, bridge.client() as client:
            assert submit(client, "stays", 6.0).status_code == 200  # long enough to be seen running
            assert submit(client, "cleared", 0.5).status_code == 200

            def one_waits() -> bool:
                queue = httpx.get(f"{back.comfy}/queue", timeout=5).json()
                return len(queue["queue_running"]) == 1 and len(queue["queue_pending"]) == 1

            wait_until(one_waits, 60, "one prompt running and one waiting on the backend")
            assert httpx.post(f"{back.comfy}/queue", json={"clear": True}, timeout=5).status_code == 200
            for client_id in ("stays", "cleared"):
                wait_done(client, client_id)
                take_png(client, client_id)
        assert "Traceback" not in back.log, back.log
    with JobStore(bridge_data / "bridge" / "jobs.sqlite3") as store:
        assert [(j.state, j.backend) for j in store.jobs_for_client("cleared")] == [(JobState.DONE, "back")]


def test_bounds_refuse_with_429_and_clients_take_turns(
    demo_models: Path, demo_images: Path, tmp_path: Path
) -> None:
    data = make_data_root(tmp_path / "data", demo_images)
    env = {
        "GENSERVE_BRIDGE__BACKENDS": "[{name: local, url: local, max_inflight: 1}]",
        "GENSERVE_BRIDGE__MAX_QUEUED_PER_CLIENT": "3",
        "GENSERVE_BRIDGE__MAX_QUEUED": "5",
        "GENSERVE_BRIDGE__RETRY_AFTER_S": "7",
    }
    with bridge_server(demo_models, data, **env) as server, server.client() as client:
        assert submit(client, "greedy", 4.0).status_code == 200
        wait_until(lambda: info(client, "greedy")["status"] == "progress", 60, "greedy's first job to run")
        for seed in (2, 3, 4):
            assert submit(client, "greedy", 0.0, seed).status_code == 200
        refused = submit(client, "greedy", 0.0, 5)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "7"
        assert "bridge.max_queued_per_client" in refused.json()["detail"], refused.json()

        assert submit(client, "modest", 0.0).status_code == 200
        assert info(client, "modest")["details"] == "waiting in queue: position 1"
        assert submit(client, "third", 0.0).status_code == 200
        full = submit(client, "fourth", 0.0)
        assert full.status_code == 429 and full.headers["retry-after"] == "7"
        assert set(full.json()) == {"detail"} and "bridge.max_queued" in full.json()["detail"]

        store = server.server.web.bridge.store  # type: ignore[union-attr]

        def jobs() -> list[Any]:
            return [job for c in ("greedy", "modest", "third") for job in store.jobs_for_client(c)]

        wait_until(lambda: all(job.state.finished for job in jobs()), 120, "every job to end")
        started = sorted(jobs(), key=lambda job: job.started_at or 0.0)
    assert [job.state for job in started] == [JobState.DONE] * 6
    # greedy's first job ran alone; then each client in turn, those not served yet first.
    clients = [job.client_id for job in started]
    assert clients == ["greedy", "modest", "third", "greedy", "greedy", "greedy"]
