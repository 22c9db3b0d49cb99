"""Settings: one pydantic model read from YAML and ``GENSERVE_SECTION__KEY`` variables, a module a section.

Imports nothing of genserve; every layer may import it. The names below are the package's face:
``from genserve.config import Settings, load_settings``.
"""

from genserve.config.auth import AuthSettings
from genserve.config.bridge import BackendSettings, BridgeSettings
from genserve.config.cluster import ClusterSettings
from genserve.config.comfy import ComfySettings
from genserve.config.engine import EngineSettings
from genserve.config.files import FilesSettings
from genserve.config.grpc import GrpcSettings
from genserve.config.kafka import KafkaSettings
from genserve.config.lipsync import LipsyncModelSettings, LipsyncSettings
from genserve.config.loading import CONFIG_ENV, ENV_PREFIX, ConfigError, load_settings
from genserve.config.logging import LoggingSettings
from genserve.config.models import ModelsSettings
from genserve.config.pipeline import PipelineSettings, SamplerName, SchedulerName, UpscaleMethod
from genserve.config.server import ServerSettings
from genserve.config.settings import Settings
from genserve.config.storage import StorageSettings
from genserve.config.workflows import WorkflowsSettings

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "AuthSettings",
    "BackendSettings",
    "BridgeSettings",
    "ClusterSettings",
    "ComfySettings",
    "ConfigError",
    "EngineSettings",
    "FilesSettings",
    "GrpcSettings",
    "KafkaSettings",
    "LipsyncModelSettings",
    "LipsyncSettings",
    "LoggingSettings",
    "ModelsSettings",
    "PipelineSettings",
    "SamplerName",
    "SchedulerName",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "UpscaleMethod",
    "WorkflowsSettings",
    "load_settings",
]
