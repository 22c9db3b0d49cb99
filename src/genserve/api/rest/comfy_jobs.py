"""ComfyUI's jobs API (``GET /jobs``, ``GET /jobs/{id}``): the queue and the history as one list of
jobs, which the frontend's queue and assets panels read. Built from the same ``PromptQueue``
listings as ``/queue`` and ``/history``, so a caller sees only its own prompts there too."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from genserve.api.rest.auth import PrincipalDep
from genserve.api.rest.dependencies import PromptQueueDep

router = APIRouter(tags=["comfyui"])

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
MAX_LIMIT = 1000


def _timestamps(entry: dict[str, Any]) -> dict[str, float | None]:
    """Start and end (ms) from a history entry's status messages."""
    found: dict[str, float | None] = {"start": None, "end": None}
    for kind, data in entry.get("status", {}).get("messages", []):
        stamp = data.get("timestamp") if isinstance(data, dict) else None
        if kind == "execution_start":
            found["start"] = stamp
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            found["end"] = stamp
    return found


def _finished(prompt_id: str, entry: dict[str, Any], detail: bool = False) -> dict[str, Any]:
    outputs: dict[str, Any] = entry.get("outputs", {})
    files = [
        {**item, "nodeId": node, "mediaType": media}
        for node, output in outputs.items()
        for media in ("images", "video", "audio")
        for item in output.get(media, [])
        if isinstance(item, dict)
    ]
    status = entry.get("status", {})
    interrupted = any(kind == "execution_interrupted" for kind, _ in status.get("messages", []))
    state = "completed" if status.get("status_str") == "success" else "cancelled" if interrupted else "failed"
    stamps = _timestamps(entry)
    number = entry.get("prompt", [0])[0]
    job: dict[str, Any] = {
        "id": prompt_id,
        "status": state,
        "create_time": stamps["start"] or 0,
        "execution_start_time": stamps["start"],
        "execution_end_time": stamps["end"],
        "preview_output": files[0] if files else None,
        "outputs_count": len(files),
        "previewable_outputs_count": len(files),
        "priority": number if isinstance(number, int) else 0,
    }
    if detail:
        job |= {"outputs": outputs, "execution_status": status, "update_time": stamps["end"]}
    return job


def _waiting(entry: list[Any], running: bool) -> dict[str, Any]:
    return {
        "id": entry[1],
        "status": "in_progress" if running else "pending",
        "create_time": int(time.time() * 1000),
        "outputs_count": None,
        "previewable_outputs_count": None,
        "priority": entry[0],
    }


def _all_jobs(executor: Any, caller: Any) -> list[dict[str, Any]]:
    queue = executor.queue(viewer=caller)
    history = executor.history(viewer=caller)
    jobs = [_waiting(e, True) for e in queue["queue_running"]]
    jobs += [_waiting(e, False) for e in queue["queue_pending"]]
    jobs += [_finished(pid, entry) for pid, entry in reversed(list(history.items()))]
    return jobs


@router.get("/jobs")
async def jobs(
    executor: PromptQueueDep, caller: PrincipalDep, status: str = "", limit: int = 200, offset: int = 0
) -> dict[str, Any]:
    wanted = {s for s in status.split(",") if s in STATUSES} or set(STATUSES)
    limit, offset = max(0, min(limit, MAX_LIMIT)), max(0, offset)
    chosen = [job for job in _all_jobs(executor, caller) if job["status"] in wanted]
    page = chosen[offset : offset + limit]
    return {
        "jobs": page,
        "pagination": {
            "offset": offset,
            "limit": limit,
            "total": len(chosen),
            "has_more": offset + limit < len(chosen),
        },
    }


@router.get("/jobs/{job_id}")
async def job(job_id: str, executor: PromptQueueDep, caller: PrincipalDep) -> Response:
    entry = executor.history(job_id, viewer=caller).get(job_id)
    if entry is not None:
        return JSONResponse(_finished(job_id, entry, detail=True))
    for waiting in _all_jobs(executor, caller):
        if waiting["id"] == job_id:
            return JSONResponse(waiting)
    return JSONResponse({"error": "job not found"}, status_code=404)
