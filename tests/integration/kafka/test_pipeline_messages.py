"""Every pipeline service through Kafka, with the spec's message format: the request as the spec
writes it (paths adapted), the answer as the REST door gives it, on the topics the spec names."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import torch
from PIL import Image

from genserve.services.pipeline import examples
from tests.integration.kafka.conftest import (
    Broker,
    TopicReader,
    kafka_settings,
    message,
    produce,
    running_door,
)

SERVICES = ["latent_encoder", "text_encoder", "sampling", "decoding", "edit"]


def test_each_service_answers_the_spec_message(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    settings = kafka_settings(demo_models, data_root, broker, tmp_path / "responses.sqlite", SERVICES)
    inputs, outputs = data_root / "inputs", data_root / "outputs"
    person, cloth = str(inputs / "person.png"), str(inputs / "cloth.png")

    async def ask(door_service: str, request_input: dict[str, object], **output: str) -> dict[str, object]:
        rid = str(uuid.uuid4())
        topic = f"{door_service.replace('_', '-')}-requests"
        reply_topic = output.get("topic", f"{door_service.replace('_', '-')}-responses")
        async with TopicReader(broker.bootstrap, reply_topic) as reader:
            await produce(broker.bootstrap, topic, [message(door_service, request_input, rid, **output)])
            answers = await reader.bodies_for({rid})
        assert len(answers[rid]) == 1
        body = answers[rid][0]
        assert body["status"] == "success", body
        assert body["request_id"] == rid
        return body

    async def scenario() -> None:
        async with running_door(settings):
            # The spec's latent_encoder message, output block and all ("key": "request_id").
            latent = await ask(
                "latent_encoder",
                {"image_path": person, "vae_model_name": "qwen_image_vae.safetensors"},
                topic="latent-encoder-responses",
                key="request_id",
            )
            assert latent["latent_shape"][:3] == [1, 16, 1]
            assert (
                list(torch.load(latent["latent_file_path"], weights_only=True)["latent"].shape)
                == latent["latent_shape"]
            )
            encoded = await ask(
                "text_encoder",
                {
                    "image1_path": person,
                    "image2_path": cloth,
                    "prompt": "put the cloth on",
                    "negative_prompt": "",
                },
            )
            assert Path(encoded["positive_encoding_file"]).is_file()
            sampled = await ask(
                "sampling",
                {
                    "positive_encoding_file": encoded["positive_encoding_file"],
                    "negative_encoding_file": encoded["negative_encoding_file"],
                    "latent_file": latent["latent_file_path"],
                    "sampling_params": {**examples.REQUESTS["sampling"]["sampling_params"], "steps": 2},
                },
            )
            assert sampled["sampled_latent_shape"] == latent["latent_shape"]
            decoded = await ask(
                "decoding",
                {
                    "latent_file": sampled["sampled_latent_file"],
                    "output_filename": "test_male_1",
                    "output_format": "jpg",
                },
            )
            image = Path(decoded["image_file_path"])
            assert (
                image.parent == outputs and image.name.startswith("test_male_1_") and image.suffix == ".jpg"
            )
            assert decoded["file_size"] == image.stat().st_size
            with Image.open(image) as img:
                assert [img.height, img.width, 3] == decoded["image_shape"]
            edited = await ask(
                "edit",
                {**examples.REQUESTS["edit"], "image1_path": person, "image2_path": cloth,
                 "sampling_params": {"seed": 1, "steps": 1}},
            )  # fmt: skip
            assert Path(edited["image_file_path"]).is_file()

    asyncio.run(scenario())
