from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferenceRequest(_message.Message):
    __slots__ = ("client_id", "model", "prompt", "max_tokens", "temperature", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    model: str
    prompt: str
    max_tokens: int
    temperature: float
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, client_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InferenceResponse(_message.Message):
    __slots__ = ("agent_endpoint", "session_token", "expires_at", "job_id", "estimated_rtt_ms", "agent_id")
    AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_RTT_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_endpoint: str
    session_token: str
    expires_at: int
    job_id: str
    estimated_rtt_ms: float
    agent_id: str
    def __init__(self, agent_endpoint: _Optional[str] = ..., session_token: _Optional[str] = ..., expires_at: _Optional[int] = ..., job_id: _Optional[str] = ..., estimated_rtt_ms: _Optional[float] = ..., agent_id: _Optional[str] = ...) -> None: ...

class AgentRegistration(_message.Message):
    __slots__ = ("agent_id", "endpoint", "total_vram_mb", "total_ram_mb", "max_jobs", "supported_models", "capabilities")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VRAM_MB_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RAM_MB_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    endpoint: str
    total_vram_mb: int
    total_ram_mb: int
    max_jobs: int
    supported_models: _containers.RepeatedScalarFieldContainer[str]
    capabilities: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., total_vram_mb: _Optional[int] = ..., total_ram_mb: _Optional[int] = ..., max_jobs: _Optional[int] = ..., supported_models: _Optional[_Iterable[str]] = ..., capabilities: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegistrationResponse(_message.Message):
    __slots__ = ("status", "message", "heartbeat_interval_seconds")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: str
    message: str
    heartbeat_interval_seconds: int
    def __init__(self, status: _Optional[str] = ..., message: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[int] = ...) -> None: ...

class HealthUpdate(_message.Message):
    __slots__ = ("agent_id", "free_vram_mb", "free_ram_mb", "running_jobs", "queued_jobs", "cpu_percent", "rtt_ms", "timestamp")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FREE_VRAM_MB_FIELD_NUMBER: _ClassVar[int]
    FREE_RAM_MB_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    free_vram_mb: int
    free_ram_mb: int
    running_jobs: int
    queued_jobs: int
    cpu_percent: float
    rtt_ms: float
    timestamp: int
    def __init__(self, agent_id: _Optional[str] = ..., free_vram_mb: _Optional[int] = ..., free_ram_mb: _Optional[int] = ..., running_jobs: _Optional[int] = ..., queued_jobs: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., rtt_ms: _Optional[float] = ..., timestamp: _Optional[int] = ...) -> None: ...

class HealthAck(_message.Message):
    __slots__ = ("agent_id", "status", "message")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: str
    message: str
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("include_agents", "include_metrics")
    INCLUDE_AGENTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METRICS_FIELD_NUMBER: _ClassVar[int]
    include_agents: bool
    include_metrics: bool
    def __init__(self, include_agents: _Optional[bool] = ..., include_metrics: _Optional[bool] = ...) -> None: ...

class SystemStatus(_message.Message):
    __slots__ = ("total_agents", "healthy_agents", "total_jobs", "uptime", "agents")
    TOTAL_AGENTS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_AGENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_JOBS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    total_agents: int
    healthy_agents: int
    total_jobs: int
    uptime: str
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, total_agents: _Optional[int] = ..., healthy_agents: _Optional[int] = ..., total_jobs: _Optional[int] = ..., uptime: _Optional[str] = ..., agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("agent_id", "status", "free_vram_mb", "running_jobs", "last_heartbeat")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FREE_VRAM_MB_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: str
    free_vram_mb: int
    running_jobs: int
    last_heartbeat: int
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[str] = ..., free_vram_mb: _Optional[int] = ..., running_jobs: _Optional[int] = ..., last_heartbeat: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("session_token", "model", "prompt", "max_tokens", "temperature", "stream", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    model: str
    prompt: str
    max_tokens: int
    temperature: float
    stream: bool
    options: _containers.ScalarMap[str, str]
    def __init__(self, session_token: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., stream: _Optional[bool] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("session_token", "content", "done", "token", "created_at", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    content: str
    done: bool
    token: str
    created_at: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, session_token: _Optional[str] = ..., content: _Optional[str] = ..., done: _Optional[bool] = ..., token: _Optional[str] = ..., created_at: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AgentStatusRequest(_message.Message):
    __slots__ = ("agent_id", "include_jobs")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JOBS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    include_jobs: bool
    def __init__(self, agent_id: _Optional[str] = ..., include_jobs: _Optional[bool] = ...) -> None: ...

class AgentStatusResponse(_message.Message):
    __slots__ = ("agent_id", "status", "free_vram_mb", "free_ram_mb", "active_sessions", "total_requests_processed", "model_loaded")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FREE_VRAM_MB_FIELD_NUMBER: _ClassVar[int]
    FREE_RAM_MB_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOADED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: str
    free_vram_mb: int
    free_ram_mb: int
    active_sessions: int
    total_requests_processed: int
    model_loaded: str
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[str] = ..., free_vram_mb: _Optional[int] = ..., free_ram_mb: _Optional[int] = ..., active_sessions: _Optional[int] = ..., total_requests_processed: _Optional[int] = ..., model_loaded: _Optional[str] = ...) -> None: ...

class PublicKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PublicKeyResponse(_message.Message):
    __slots__ = ("public_key_pem", "algorithm", "issuer")
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    public_key_pem: str
    algorithm: str
    issuer: str
    def __init__(self, public_key_pem: _Optional[str] = ..., algorithm: _Optional[str] = ..., issuer: _Optional[str] = ...) -> None: ...
