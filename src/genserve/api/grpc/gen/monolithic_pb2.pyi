from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompositeBatchRequest(_message.Message):
    __slots__ = ("model_id", "visual_frames", "raw_audio", "audio_features", "batch_size", "start_frame_idx", "sample_rate")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VISUAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    RAW_AUDIO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FEATURES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_IDX_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    visual_frames: bytes
    raw_audio: bytes
    audio_features: bytes
    batch_size: int
    start_frame_idx: int
    sample_rate: int
    def __init__(self, model_id: _Optional[str] = ..., visual_frames: _Optional[bytes] = ..., raw_audio: _Optional[bytes] = ..., audio_features: _Optional[bytes] = ..., batch_size: _Optional[int] = ..., start_frame_idx: _Optional[int] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class CompositeBatchResponse(_message.Message):
    __slots__ = ("composited_frames", "inference_time_ms", "composite_time_ms", "total_time_ms", "audio_processing_ms", "model_loaded", "model_load_time_ms", "success", "error", "gpu_id")
    COMPOSITED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOADED_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOAD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    composited_frames: _containers.RepeatedScalarFieldContainer[bytes]
    inference_time_ms: float
    composite_time_ms: float
    total_time_ms: float
    audio_processing_ms: float
    model_loaded: bool
    model_load_time_ms: float
    success: bool
    error: str
    gpu_id: int
    def __init__(self, composited_frames: _Optional[_Iterable[bytes]] = ..., inference_time_ms: _Optional[float] = ..., composite_time_ms: _Optional[float] = ..., total_time_ms: _Optional[float] = ..., audio_processing_ms: _Optional[float] = ..., model_loaded: _Optional[bool] = ..., model_load_time_ms: _Optional[float] = ..., success: _Optional[bool] = ..., error: _Optional[str] = ..., gpu_id: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("healthy", "loaded_models", "max_models", "gpu_ids", "gpu_memory_used_gb")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODELS_FIELD_NUMBER: _ClassVar[int]
    GPU_IDS_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_USED_GB_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    loaded_models: int
    max_models: int
    gpu_ids: _containers.RepeatedScalarFieldContainer[int]
    gpu_memory_used_gb: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, healthy: _Optional[bool] = ..., loaded_models: _Optional[int] = ..., max_models: _Optional[int] = ..., gpu_ids: _Optional[_Iterable[int]] = ..., gpu_memory_used_gb: _Optional[_Iterable[float]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "loaded", "gpu_id", "memory_mb", "request_count", "avg_inference_ms")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    AVG_INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    loaded: bool
    gpu_id: int
    memory_mb: int
    request_count: int
    avg_inference_ms: float
    def __init__(self, model_id: _Optional[str] = ..., loaded: _Optional[bool] = ..., gpu_id: _Optional[int] = ..., memory_mb: _Optional[int] = ..., request_count: _Optional[int] = ..., avg_inference_ms: _Optional[float] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model_id", "preferred_gpu")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_GPU_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    preferred_gpu: int
    def __init__(self, model_id: _Optional[str] = ..., preferred_gpu: _Optional[int] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("success", "error", "gpu_id", "load_time_ms")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error: str
    gpu_id: int
    load_time_ms: float
    def __init__(self, success: _Optional[bool] = ..., error: _Optional[str] = ..., gpu_id: _Optional[int] = ..., load_time_ms: _Optional[float] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("success", "error")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error: str
    def __init__(self, success: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class GetModelStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelStatsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStats]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("model_id", "loaded", "gpu_id", "memory_mb", "request_count", "total_inference_ms", "avg_inference_ms", "last_used_timestamp")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    AVG_INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    loaded: bool
    gpu_id: int
    memory_mb: int
    request_count: int
    total_inference_ms: int
    avg_inference_ms: float
    last_used_timestamp: int
    def __init__(self, model_id: _Optional[str] = ..., loaded: _Optional[bool] = ..., gpu_id: _Optional[int] = ..., memory_mb: _Optional[int] = ..., request_count: _Optional[int] = ..., total_inference_ms: _Optional[int] = ..., avg_inference_ms: _Optional[float] = ..., last_used_timestamp: _Optional[int] = ...) -> None: ...
