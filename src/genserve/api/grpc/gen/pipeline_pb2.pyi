from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("image_path", "vae_model_name", "output_dir", "upscale_method", "megapixels", "request_id")
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    VAE_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_METHOD_FIELD_NUMBER: _ClassVar[int]
    MEGAPIXELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image_path: str
    vae_model_name: str
    output_dir: str
    upscale_method: str
    megapixels: float
    request_id: str
    def __init__(self, image_path: _Optional[str] = ..., vae_model_name: _Optional[str] = ..., output_dir: _Optional[str] = ..., upscale_method: _Optional[str] = ..., megapixels: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("latent_file_path", "latent_shape", "status", "request_id", "metadata")
    LATENT_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    LATENT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    latent_file_path: str
    latent_shape: _containers.RepeatedScalarFieldContainer[int]
    status: str
    request_id: str
    metadata: _struct_pb2.Struct
    def __init__(self, latent_file_path: _Optional[str] = ..., latent_shape: _Optional[_Iterable[int]] = ..., status: _Optional[str] = ..., request_id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TextEncodeRequest(_message.Message):
    __slots__ = ("image1_path", "image2_path", "image3_path", "prompt", "negative_prompt", "clip_model_name", "vae_model_name", "output_dir", "vae_reference_megapixels", "vision_reference_megapixels", "request_id")
    IMAGE1_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE2_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE3_PATH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CLIP_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VAE_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    VAE_REFERENCE_MEGAPIXELS_FIELD_NUMBER: _ClassVar[int]
    VISION_REFERENCE_MEGAPIXELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image1_path: str
    image2_path: str
    image3_path: str
    prompt: str
    negative_prompt: str
    clip_model_name: str
    vae_model_name: str
    output_dir: str
    vae_reference_megapixels: float
    vision_reference_megapixels: float
    request_id: str
    def __init__(self, image1_path: _Optional[str] = ..., image2_path: _Optional[str] = ..., image3_path: _Optional[str] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., clip_model_name: _Optional[str] = ..., vae_model_name: _Optional[str] = ..., output_dir: _Optional[str] = ..., vae_reference_megapixels: _Optional[float] = ..., vision_reference_megapixels: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class TextEncodeResponse(_message.Message):
    __slots__ = ("status", "request_id", "positive_encoding_file", "negative_encoding_file", "positive_shape", "negative_shape", "metadata")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_ENCODING_FILE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_ENCODING_FILE_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    status: str
    request_id: str
    positive_encoding_file: str
    negative_encoding_file: str
    positive_shape: _containers.RepeatedScalarFieldContainer[int]
    negative_shape: _containers.RepeatedScalarFieldContainer[int]
    metadata: _struct_pb2.Struct
    def __init__(self, status: _Optional[str] = ..., request_id: _Optional[str] = ..., positive_encoding_file: _Optional[str] = ..., negative_encoding_file: _Optional[str] = ..., positive_shape: _Optional[_Iterable[int]] = ..., negative_shape: _Optional[_Iterable[int]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CFG_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    DENOISE_FIELD_NUMBER: _ClassVar[int]
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float
    def __init__(self, seed: _Optional[int] = ..., steps: _Optional[int] = ..., cfg: _Optional[float] = ..., sampler_name: _Optional[str] = ..., scheduler: _Optional[str] = ..., denoise: _Optional[float] = ...) -> None: ...

class ModelTransformParams(_message.Message):
    __slots__ = ("shift", "strength")
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    shift: float
    strength: float
    def __init__(self, shift: _Optional[float] = ..., strength: _Optional[float] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("positive_encoding_file", "negative_encoding_file", "latent_file", "unet_model_name", "lora_model_name", "lora_strength", "sampling_params", "model_transform_params", "output_dir", "request_id")
    POSITIVE_ENCODING_FILE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_ENCODING_FILE_FIELD_NUMBER: _ClassVar[int]
    LATENT_FILE_FIELD_NUMBER: _ClassVar[int]
    UNET_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LORA_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LORA_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_TRANSFORM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    positive_encoding_file: str
    negative_encoding_file: str
    latent_file: str
    unet_model_name: str
    lora_model_name: str
    lora_strength: float
    sampling_params: SamplingParams
    model_transform_params: ModelTransformParams
    output_dir: str
    request_id: str
    def __init__(self, positive_encoding_file: _Optional[str] = ..., negative_encoding_file: _Optional[str] = ..., latent_file: _Optional[str] = ..., unet_model_name: _Optional[str] = ..., lora_model_name: _Optional[str] = ..., lora_strength: _Optional[float] = ..., sampling_params: _Optional[_Union[SamplingParams, _Mapping]] = ..., model_transform_params: _Optional[_Union[ModelTransformParams, _Mapping]] = ..., output_dir: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("status", "request_id", "sampled_latent_file", "sampled_latent_shape", "sampling_metadata")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_LATENT_FILE_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_LATENT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_METADATA_FIELD_NUMBER: _ClassVar[int]
    status: str
    request_id: str
    sampled_latent_file: str
    sampled_latent_shape: _containers.RepeatedScalarFieldContainer[int]
    sampling_metadata: _struct_pb2.Struct
    def __init__(self, status: _Optional[str] = ..., request_id: _Optional[str] = ..., sampled_latent_file: _Optional[str] = ..., sampled_latent_shape: _Optional[_Iterable[int]] = ..., sampling_metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("latent_file", "vae_model_name", "output_filename", "output_dir", "output_format", "request_id")
    LATENT_FILE_FIELD_NUMBER: _ClassVar[int]
    VAE_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FILENAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    latent_file: str
    vae_model_name: str
    output_filename: str
    output_dir: str
    output_format: str
    request_id: str
    def __init__(self, latent_file: _Optional[str] = ..., vae_model_name: _Optional[str] = ..., output_filename: _Optional[str] = ..., output_dir: _Optional[str] = ..., output_format: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("status", "request_id", "image_file_path", "image_shape", "file_size", "metadata")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    status: str
    request_id: str
    image_file_path: str
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    file_size: int
    metadata: _struct_pb2.Struct
    def __init__(self, status: _Optional[str] = ..., request_id: _Optional[str] = ..., image_file_path: _Optional[str] = ..., image_shape: _Optional[_Iterable[int]] = ..., file_size: _Optional[int] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("image1_path", "image2_path", "image3_path", "prompt", "negative_prompt", "vae_model_name", "clip_model_name", "unet_model_name", "lora_model_name", "lora_strength", "sampling_params", "model_transform_params", "upscale_method", "megapixels", "vae_reference_megapixels", "vision_reference_megapixels", "output_filename", "output_dir", "output_format", "request_id")
    IMAGE1_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE2_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE3_PATH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    VAE_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CLIP_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    UNET_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LORA_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LORA_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_TRANSFORM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_METHOD_FIELD_NUMBER: _ClassVar[int]
    MEGAPIXELS_FIELD_NUMBER: _ClassVar[int]
    VAE_REFERENCE_MEGAPIXELS_FIELD_NUMBER: _ClassVar[int]
    VISION_REFERENCE_MEGAPIXELS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FILENAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image1_path: str
    image2_path: str
    image3_path: str
    prompt: str
    negative_prompt: str
    vae_model_name: str
    clip_model_name: str
    unet_model_name: str
    lora_model_name: str
    lora_strength: float
    sampling_params: SamplingParams
    model_transform_params: ModelTransformParams
    upscale_method: str
    megapixels: float
    vae_reference_megapixels: float
    vision_reference_megapixels: float
    output_filename: str
    output_dir: str
    output_format: str
    request_id: str
    def __init__(self, image1_path: _Optional[str] = ..., image2_path: _Optional[str] = ..., image3_path: _Optional[str] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., vae_model_name: _Optional[str] = ..., clip_model_name: _Optional[str] = ..., unet_model_name: _Optional[str] = ..., lora_model_name: _Optional[str] = ..., lora_strength: _Optional[float] = ..., sampling_params: _Optional[_Union[SamplingParams, _Mapping]] = ..., model_transform_params: _Optional[_Union[ModelTransformParams, _Mapping]] = ..., upscale_method: _Optional[str] = ..., megapixels: _Optional[float] = ..., vae_reference_megapixels: _Optional[float] = ..., vision_reference_megapixels: _Optional[float] = ..., output_filename: _Optional[str] = ..., output_dir: _Optional[str] = ..., output_format: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("status", "request_id", "image_file_path", "image_shape", "file_size", "metadata")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    status: str
    request_id: str
    image_file_path: str
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    file_size: int
    metadata: _struct_pb2.Struct
    def __init__(self, status: _Optional[str] = ..., request_id: _Optional[str] = ..., image_file_path: _Optional[str] = ..., image_shape: _Optional[_Iterable[int]] = ..., file_size: _Optional[int] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
