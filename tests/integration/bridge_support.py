"""Shared by the bridge's integration tests: a catalog with the demo workflows plus a slow one,
and clients for the bridge's WebSocket and multipart history."""

from __future__ import annotations

import json
import threading
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from genserve.workflows.demo import DEMO_ALIASES, demo_workflow, write_demo_workflows
from tests.integration.conftest import wait_for

SLOW = "slow"  # text-to-image with a DelayImage node of "90/seconds" before SaveImage


def slow_workflow() -> dict[str, Any]:
    graph = demo_workflow("text-to-image")
    graph["90"] = {
        "class_type": "DelayImage",
        "inputs": {"image": ["8", 0], "seconds": 1.0},
        "_meta": {"title": "Delay"},
    }
    graph["60"]["inputs"]["images"] = ["90", 0]
    return graph


def write_bridge_catalog(data: Path) -> None:
    """The catalog the test settings point at (data/bridge/workflows), with the slow alias added."""
    folder = data / "bridge" / "workflows"
    write_demo_workflows(folder)
    (folder / "slow.json").write_text(json.dumps(slow_workflow()))
    aliases = {**DEMO_ALIASES, SLOW: {"file": "slow.json", "inputs": ["6/text", "3/seed", "90/seconds"]}}
    (folder / "workflow_alias.json").write_text(json.dumps(aliases))


class BridgeSocket:
    """``WS /ws?clientId=`` read on a thread: every ``{"status", "details"}`` message, and whether
    the server closed the socket."""

    def __init__(self, url: str, client_id: str) -> None:
        self.ws: ClientConnection = connect(
            url.replace("http://", "ws://") + f"/ws?clientId={client_id}", open_timeout=10
        )
        self.messages: list[dict[str, str]] = []
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.messages.append(json.loads(raw))
        except Exception:
            pass
        finally:
            self.ended.set()

    def statuses(self) -> list[str]:
        return [m["status"] for m in self.messages]

    def wait_final(self, timeout: float = 120.0) -> dict[str, str]:
        def final() -> bool:
            return any(m["status"] in ("closed", "error") for m in self.messages)

        wait_for(final, timeout, "a final message")
        return next(m for m in self.messages if m["status"] in ("closed", "error"))

    def wait_progress(self, timeout: float = 60.0) -> None:
        wait_for(lambda: "progress" in self.statuses(), timeout, "a progress message")

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


def multipart_files(response: httpx.Response) -> dict[str, tuple[str, str, bytes]]:
    """A multipart /history answer as {part name: (file name, content type, bytes)}."""
    head = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    files = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        files[str(name)] = (str(part.get_filename()), part.get_content_type(), payload)
    return files
