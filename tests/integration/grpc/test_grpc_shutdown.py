"""Stopping the server lets a running RPC finish, then refuses new ones."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from genserve.api.grpc.gen import pipeline_pb2 as pb
from genserve.api.grpc.gen import pipeline_pb2_grpc as rpc
from tests.conftest import small_settings
from tests.integration.conftest import live_server, make_data_root, wait_for


@pytest.mark.slow
def test_in_flight_rpc_finishes_on_stop(tmp_path: Path, demo_models: Path, demo_images: Path) -> None:
    data = make_data_root(tmp_path / "data", demo_images)
    with live_server(small_settings(demo_models, data), data, grpc=True) as live:
        channel = grpc.insecure_channel(live.grpc_target)
        request = pb.EditRequest(
            image1_path="inputs/person.png",
            prompt="x",
            megapixels=0.25,
            sampling_params=pb.SamplingParams(steps=12),
        )
        pending = rpc.EditorStub(channel).Edit.future(request)
        wait_for(lambda: live.running() == 1, 30, "the edit to start")
        live.server.should_exit = True  # what SIGTERM does
        answer = pending.result(timeout=120)
        assert answer.status == "success" and Path(answer.image_file_path).is_file()
        wait_for(lambda: not live.runtime.engine.accepting, 30, "the engine to close")
        try:
            rpc.EditorStub(channel).Edit(request, timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)  # type: ignore[attr-defined]
        else:
            raise AssertionError("a stopped server accepted an RPC")
        channel.close()
    assert not live.runtime.models.loaded()  # the models were unloaded after the last RPC
