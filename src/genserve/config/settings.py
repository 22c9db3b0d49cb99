"""The whole configuration: one section a module, each with a default for every key."""

from __future__ import annotations

from pydantic import Field

from genserve.config.auth import AuthSettings
from genserve.config.base import Section
from genserve.config.bridge import BridgeSettings
from genserve.config.cluster import ClusterSettings
from genserve.config.comfy import ComfySettings
from genserve.config.engine import EngineSettings
from genserve.config.files import FilesSettings
from genserve.config.grpc import GrpcSettings
from genserve.config.kafka import KafkaSettings
from genserve.config.lipsync import LipsyncSettings
from genserve.config.logging import LoggingSettings
from genserve.config.models import ModelsSettings
from genserve.config.pipeline import PipelineSettings
from genserve.config.server import ServerSettings
from genserve.config.storage import StorageSettings
from genserve.config.workflows import WorkflowsSettings


class Settings(Section):
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    files: FilesSettings = Field(default_factory=FilesSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    workflows: WorkflowsSettings = Field(default_factory=WorkflowsSettings)
    comfy: ComfySettings = Field(default_factory=ComfySettings)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    lipsync: LipsyncSettings = Field(default_factory=LipsyncSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
