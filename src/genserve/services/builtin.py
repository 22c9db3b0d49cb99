"""Every service by its spec name; the engine and the doors look services up here."""

from __future__ import annotations

from typing import Any

from genserve.services.base import Service
from genserve.services.pipeline import (
    decoding,
    edit,
    image_generation,
    latent_encoder,
    sampling,
    text_encoder,
)
from genserve.services.text import generation as text_generation

SERVICES: dict[str, Service[Any, Any]] = {
    module.SERVICE.name: module.SERVICE
    for module in (latent_encoder, text_encoder, sampling, decoding, edit, image_generation, text_generation)
}
