"""The drop-folder door on real folders: each service, bad files, a crash-left claim resumed, a
file still being written left alone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.api.files import FileDoor
from genserve.app.runtime import Runtime, build_runtime
from tests.conftest import small_settings


class Drop:
    """A started door and helpers to drop requests and wait for their responses."""

    def __init__(self, door: FileDoor) -> None:
        self.door = door
        self.input = door.input_dir
        self.output = door.output_dir

    def put(self, request_id: str, content: dict[str, Any] | str) -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        temp = self.input / f".request_{request_id}.json.tmp"  # the writer's rule: write, then rename
        temp.write_text(text)
        temp.rename(self.input / f"request_{request_id}.json")

    async def response(self, request_id: str, timeout: float = 60) -> dict[str, Any]:
        path = self.output / f"response_{request_id}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"no response for {request_id}"
            await asyncio.sleep(0.02)
        return json.loads(path.read_text())

    async def settled(self, request_id: str, where: str, timeout: float = 10) -> Path:
        path = self.input / where / f"request_{request_id}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"request_{request_id}.json never reached {where}/"
            await asyncio.sleep(0.02)
        return path


def run_with_door(runtime: Runtime, scenario: Callable[[Drop], Awaitable[None]]) -> None:
    async def main() -> None:
        door = FileDoor(runtime)
        await door.start()
        try:
            await scenario(Drop(door))
        finally:
            await door.stop()

    asyncio.run(main())


@pytest.fixture
def runtime(demo_models: Path, data_root: Path):  # type: ignore[no-untyped-def]
    settings = small_settings(
        demo_models,
        data_root,
        GENSERVE_FILES__INPUT_DIR=str(data_root / "drop" / "in"),
        GENSERVE_FILES__OUTPUT_DIR=str(data_root / "outputs" / "drop"),
        GENSERVE_FILES__POLL_INTERVAL_S="0.05",
    )
    with build_runtime(settings) as rt:
        yield rt


def test_every_service_through_the_drop_folder(runtime: Runtime, data_root: Path) -> None:
    inputs = data_root / "inputs"

    async def scenario(drop: Drop) -> None:
        # A dot in the id: the outputs and the metadata file carry the same id, whole.
        drop.put("lat.1", {"service": "latent_encoder", "input": {"image_path": str(inputs / "person.png")}})
        latent = await drop.response("lat.1")
        assert latent["status"] == "success" and latent["request_id"] == "lat.1"
        assert Path(latent["latent_file_path"]) == drop.output / "latent_lat.1.pt"
        metadata = json.loads((drop.output / "metadata_lat.1.json").read_text())
        assert metadata == latent["metadata"]
        await drop.settled("lat.1", "done")

        pair = {
            "image1_path": str(inputs / "person.png"),
            "image2_path": str(inputs / "cloth.png"),
            "prompt": "x",
        }
        drop.put("txt1", {"service": "text_encoder", "input": pair})
        enc = await drop.response("txt1")
        assert Path(enc["positive_encoding_file"]) == drop.output / "positive_enc_txt1.pt"

        sample_input = {
            "positive_encoding_file": enc["positive_encoding_file"],
            "latent_file": latent["latent_file_path"],
            "sampling_params": {"seed": 3, "steps": 2},
        }
        drop.put("smp1", {"service": "sampling", "input": sample_input})
        sampled = await drop.response("smp1")
        assert sampled["status"] == "success"
        assert json.loads((drop.output / "metadata_smp1.json").read_text())["seed"] == 3
        shape = list(torch.load(sampled["sampled_latent_file"], weights_only=True)["latent"].shape)
        assert sampled["sampled_latent_shape"] == shape

        decode_input = {
            "latent_file": sampled["sampled_latent_file"],
            "output_filename": "drop",
            "output_format": "png",
        }
        drop.put("dec1", {"service": "decoding", "input": decode_input})
        decoded = await drop.response("dec1")
        assert Path(decoded["image_file_path"]) == drop.output / "drop_dec1.png"

        drop.put("edit1", {"service": "edit", "input": {**pair, "sampling_params": {"steps": 2}}})
        edited = await drop.response("edit1")
        assert edited["status"] == "success" and Path(edited["image_file_path"]).is_file()
        for rid in ("txt1", "smp1", "dec1", "edit1"):
            await drop.settled(rid, "done")

    run_with_door(runtime, scenario)


def test_bad_files_fail_alone_with_an_error_response(runtime: Runtime, data_root: Path) -> None:
    async def scenario(drop: Drop) -> None:
        drop.put("bad-json", "{not json")
        drop.put("bad-service", {"service": "teleport", "input": {}})
        drop.put("bad-field", {"service": "latent_encoder", "input": {"image_path": "x.png", "vae": "y"}})
        drop.put("missing", {"service": "latent_encoder", "input": {"image_path": "inputs/absent.png"}})
        drop.put("good", {"service": "latent_encoder", "input": {"image_path": "inputs/person.png"}})
        expected = {
            "bad-json": "INVALID_INPUT",
            "bad-service": "NOT_FOUND",
            "bad-field": "INVALID_INPUT",
            "missing": "IMAGE_NOT_FOUND",
        }
        for rid, code in expected.items():
            answer = await drop.response(rid)
            assert answer["status"] == "error" and answer["error_code"] == code, answer
            assert answer["request_id"] == rid and answer["timestamp"].endswith("Z")
            await drop.settled(rid, "failed")
            assert json.loads((drop.input / "failed" / f"response_{rid}.json").read_text()) == answer
        assert "vae" in (await drop.response("bad-field"))["error_message"]
        assert (await drop.response("good"))["status"] == "success"  # the worker went on
        await drop.settled("good", "done")

    run_with_door(runtime, scenario)


def test_a_claim_left_by_a_crash_is_resumed_and_a_half_written_file_is_left_alone(
    runtime: Runtime, data_root: Path
) -> None:
    claimed = data_root / "drop" / "in" / "claimed"
    claimed.mkdir(parents=True)
    body = {"service": "latent_encoder", "input": {"image_path": "inputs/person.png"}}
    (claimed / "request_crashed.json").write_text(json.dumps(body))  # claimed, then the worker died
    writing = data_root / "drop" / "in" / ".request_later.json.tmp"
    writing.write_text('{"service": "latent_encoder", "inp')  # a writer still at work

    async def scenario(drop: Drop) -> None:
        answer = await drop.response("crashed")
        assert answer["status"] == "success"
        await drop.settled("crashed", "done")
        await asyncio.sleep(0.3)  # several polls
        assert writing.exists() and not (drop.output / "response_later.json").exists()
        writing.write_text(json.dumps(body))
        writing.rename(drop.input / "request_later.json")
        assert (await drop.response("later"))["status"] == "success"

    run_with_door(runtime, scenario)
