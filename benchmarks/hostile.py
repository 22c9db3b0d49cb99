"""A hostile client against a real ``genserve serve``: how many attempts per category got the right
answer, and what the server's resident memory did before, during and after.

The server runs as a subprocess (REST, gRPC, the ComfyUI API and the bridge on loopback, with API
keys) on the demo models. Each round sends every attempt below; an attempt is *correct* when the
answer is the refusal it should be (a 4xx or the gRPC code named), with no absolute path and no
traceback in it, and the server still answers ``/health/live`` afterwards.

- paths: long, deep, NUL, ``..``, absolute and symlinked names in every path field and /view;
- malformed: JSON nested 1,000 deep on four routes, a 5,000-character multipart boundary, a
  10 MB header, a PNG declaring 30000x30000 pixels, random bytes to every gRPC method;
- auth: no key, a wrong key, an ``infer`` key on admin routes, a WebSocket and gRPC without keys;
- delivery: a queue past ``bridge.max_queued_per_client``.

RSS is sampled every 50 ms; "after" is read once the server was idle past ``server.trim_idle_s``
(memory must come back within a stated bound of "before": printed as a ratio).

    .venv/bin/python benchmarks/hostile.py [--rounds 5] [--idle 15]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from PIL import Image
from pipeline_overhead import models_folder  # benchmarks/ is on sys.path when run as a script
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from genserve.auth.keys import KeyStore
from genserve.auth.principal import Scope

Attempt = Callable[[], bool]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, work: Path) -> None:
        data = work / "data"
        (data / "inputs").mkdir(parents=True)
        (data / "outputs").mkdir()
        self.secret = work / "secret.txt"
        self.secret.write_text("not for clients")
        (data / "inputs" / "link.png").symlink_to(self.secret)
        Image.new("RGB", (64, 64), "red").save(data / "inputs" / "ok.png")
        store = KeyStore(work / "auth" / "keys.json")
        self.admin = store.add("ops", {Scope.ADMIN})[1]
        self.infer = store.add("app", {Scope.INFER})[1]
        self.port, self.grpc_port = free_port(), free_port()
        self.markers = [str(work), str(Path.cwd()), "/tmp/", "Traceback"]
        env = {
            **os.environ,
            "GENSERVE_MODELS__DIR": str(models_folder(work)),
            "GENSERVE_STORAGE__READ_ROOTS": f"[{data}]",
            "GENSERVE_STORAGE__WRITE_ROOTS": f"[{data / 'outputs'}]",
            "GENSERVE_STORAGE__DEFAULT_OUTPUT_DIR": str(data / "outputs"),
            "GENSERVE_WORKFLOWS__INPUT_DIR": str(data / "inputs"),
            "GENSERVE_WORKFLOWS__OUTPUT_DIR": str(data / "outputs" / "workflows"),
            "GENSERVE_BRIDGE__JOBS_DB": str(data / "bridge" / "jobs.sqlite3"),
            "GENSERVE_BRIDGE__RESULTS_DIR": str(data / "bridge" / "results"),
            "GENSERVE_BRIDGE__WORKFLOWS_DIR": str(data / "bridge" / "workflows"),
            "GENSERVE_BRIDGE__ALIAS_FILE": str(data / "bridge" / "workflows" / "workflow_alias.json"),
            "GENSERVE_BRIDGE__MAX_QUEUED_PER_CLIENT": "2",
            "GENSERVE_GRPC__PORTS": f"[{self.grpc_port}]",
            "GENSERVE_AUTH__KEYS_FILE": str(store.path),
            "GENSERVE_SERVER__ACCESS_LOG": "false",
            "GENSERVE_LOGGING__LEVEL": "WARNING",
        }
        exe = shutil.which("genserve", path=str(Path(sys.executable).parent)) or "genserve"
        self.log = (work / "server.log").open("wb")
        command = [exe, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(command, env=env, cwd=work, stdout=self.log, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError("genserve serve did not get ready; see server.log")
        self.http = httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {self.infer}"}
        )

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def clean(self, text: str) -> bool:
        return not any(marker in text for marker in self.markers)

    def alive(self) -> bool:
        return httpx.get(self.url + "/health/live", timeout=10).status_code == 200

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def refused(server: Server, response: httpx.Response) -> bool:
    return 400 <= response.status_code < 500 and server.clean(response.text)


def path_attempts(s: Server) -> list[Attempt]:
    bad = ["a" * 5000, "b/" * 2000 + "x.png", "../../etc/passwd", "/etc/passwd", "x\x00.png", "link.png"]
    attempts: list[Attempt] = []
    for value in bad:
        attempts.append(
            lambda v=value: refused(s, s.http.post("/api/v1/latent/encode", json={"image_path": v}))
        )
        attempts.append(
            lambda v=value: refused(s, s.http.get("/comfy/view", params={"filename": v, "type": "input"}))
        )
        body = {"latent_path": "x.pt", "output_dir": "c/" * 2000, "output_filename": value[:300]}
        attempts.append(lambda b=body: refused(s, s.http.post("/api/v1/decoding/decode", json=b)))
        named = {"image_path": "inputs/ok.png", "vae_model_name": value}
        attempts.append(lambda b=named: refused(s, s.http.post("/api/v1/latent/encode", json=b)))
    return attempts


def deep_json(depth: int = 1000) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def bomb_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


GRPC_METHODS = [
    "/LatentEncoder/EncodeImage",
    "/drawthings.ImageGenerationService/GenerateImage",
    "/drawthings.ImageGenerationService/FilesExist",
    "/drawthings.ImageGenerationService/Echo",
]


def malformed_attempts(s: Server) -> list[Attempt]:
    attempts: list[Attempt] = []
    json_headers = {"content-type": "application/json"}
    for route in (
        "/comfy/prompt",
        "/generate-based-workflow?clientId=h",
        "/v1/chat/completions",
        "/comfy/queue",
    ):
        attempts.append(lambda r=route: refused(s, s.http.post(r, content=deep_json(), headers=json_headers)))
    boundary = "x" * 5000
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}"}
    body = f"--{boundary}\r\n".encode() + b"junk"
    attempts.append(lambda: refused(s, s.http.post("/comfy/upload/image", content=body, headers=multipart)))
    attempts.append(lambda: refused(s, s.http.get("/health/live", headers={"x-big": "a" * 10_000_000})))
    files = {"image": ("bomb.png", bomb_png(), "image/png")}
    attempts.append(lambda: refused(s, s.http.post("/comfy/upload/image", files=files)))
    metadata = [("authorization", f"Bearer {s.infer}")]

    def grpc_garbage(method: str) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                call(random.randbytes(random.randint(1, 4096)), metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                return exc.code() is grpc.StatusCode.INVALID_ARGUMENT and s.clean(str(exc.details()))
            return False

    attempts.extend(lambda m=method: grpc_garbage(m) for method in GRPC_METHODS)
    return attempts


def auth_attempts(s: Server) -> list[Attempt]:
    anonymous = httpx.Client(base_url=s.url, timeout=30)
    wrong = {"Authorization": "Bearer gsk_00000000_nope"}

    def status(response: httpx.Response, code: int) -> bool:
        return response.status_code == code and s.clean(response.text)

    def ws_without_key() -> bool:
        try:
            connect(s.url.replace("http", "ws") + "/comfy/ws?clientId=h", open_timeout=10).close()
        except InvalidStatus as exc:
            return exc.response.status_code == 403
        return False

    def grpc_without_key() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            call = channel.unary_unary(GRPC_METHODS[-1], request_serializer=None, response_deserializer=None)
            try:
                call(b"", timeout=30)
            except grpc.RpcError as exc:
                return exc.code() is grpc.StatusCode.UNAUTHENTICATED
            return False

    return [
        lambda: status(anonymous.get("/api/v1/models"), 401),
        lambda: status(anonymous.get("/api/v1/models", headers=wrong), 401),
        lambda: status(anonymous.post("/comfy/prompt", json={}), 401),
        lambda: status(s.http.post("/free", json={}), 403),
        lambda: status(s.http.post("/comfy/queue", json={"clear": True}), 403),
        lambda: status(s.http.post("/api/v1/models/vae/x/unload"), 403),
        ws_without_key,
        grpc_without_key,
    ]


def delivery_attempts(s: Server) -> list[Attempt]:
    def queue_bound() -> bool:
        body = {"workflow": "text-to-image", "6/text": "x"}
        answers = [s.http.post("/generate-based-workflow?clientId=greedy", json=body) for _ in range(8)]
        s.http.post("/interrupt?clientId=greedy")
        return any(a.status_code == 429 and "Retry-After" in a.headers for a in answers)

    return [queue_bound]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="times every attempt is made")
    parser.add_argument("--idle", type=float, default=15.0, help="seconds to wait idle before 'after'")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    server = Server(work)
    peak, sampling = [server.rss_mb()], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            peak.append(server.rss_mb())

    try:
        # Warm up before "before": the routes, and the models a bridge job loads (they stay loaded).
        server.http.get("/api/v1/models")
        for attempt in delivery_attempts(server):
            attempt()
        time.sleep(args.idle)
        before = server.rss_mb()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        categories = {
            "paths": path_attempts(server),
            "malformed": malformed_attempts(server),
            "auth": auth_attempts(server),
            "delivery": delivery_attempts(server),
        }
        tally: dict[str, Counter[str]] = {name: Counter() for name in categories}
        for _ in range(args.rounds):
            for name, attempts in categories.items():
                for attempt in attempts:
                    try:
                        ok = attempt() and server.alive()
                    except Exception:  # a dropped connection or a hung server is a failure
                        ok = False
                    tally[name]["correct" if ok else "failed"] += 1
        sampling.set()
        sampler.join()
        during = max(peak)
        time.sleep(args.idle)
        after = server.rss_mb()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'category':<10} {'attempts':>8} {'correct':>8} {'failed':>7}")
    for name, counts in tally.items():
        total = counts["correct"] + counts["failed"]
        print(f"{name:<10} {total:>8} {counts['correct']:>8} {counts['failed']:>7}")
    print(
        f"RSS MB: before {before:.0f}, during (peak) {during:.0f}, after {args.idle:.0f} s idle {after:.0f}"
    )
    print(f"RSS after / before: {after / before:.2f} (target <= 1.25)")
    print(json.dumps({"rss_mb": {"before": before, "peak": during, "after": after}}))
    return 0 if all(c["failed"] == 0 for c in tally.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
