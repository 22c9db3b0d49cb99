from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class FilesExistRequest(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, files: _Optional[_Iterable[str]] = ...) -> None: ...

class FilesExistResponse(_message.Message):
    __slots__ = ("files", "exists", "errors")
    FILES_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedScalarFieldContainer[str]
    exists: _containers.RepeatedScalarFieldContainer[bool]
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, files: _Optional[_Iterable[str]] = ..., exists: _Optional[_Iterable[bool]] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class ImageGenerationRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "width", "height", "steps", "cfg_scale", "seed", "sampler", "restore_faces", "enable_hr", "denoising_strength", "batch_size", "batch_count")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FACES_FIELD_NUMBER: _ClassVar[int]
    ENABLE_HR_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    seed: int
    sampler: str
    restore_faces: bool
    enable_hr: bool
    denoising_strength: float
    batch_size: int
    batch_count: int
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., cfg_scale: _Optional[float] = ..., seed: _Optional[int] = ..., sampler: _Optional[str] = ..., restore_faces: _Optional[bool] = ..., enable_hr: _Optional[bool] = ..., denoising_strength: _Optional[float] = ..., batch_size: _Optional[int] = ..., batch_count: _Optional[int] = ...) -> None: ...

class ImageGenerationResponse(_message.Message):
    __slots__ = ("images", "info", "events")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    info: str
    events: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., info: _Optional[str] = ..., events: _Optional[_Iterable[str]] = ...) -> None: ...

class UploadFileRequest(_message.Message):
    __slots__ = ("filename", "data")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    filename: str
    data: bytes
    def __init__(self, filename: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadFileResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...
