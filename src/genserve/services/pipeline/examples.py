"""The pipeline spec's request and response examples: shown in every door's docs (/docs and
/openapi.json for REST) and used by the tests as the requests a spec reader would send.

Written as the spec writes them (its paths and illustrative shapes); the real Qwen-Image latents
are 5-D, as the responses of a running server show.
"""

from __future__ import annotations

from typing import Any

REQUESTS: dict[str, dict[str, Any]] = {
    "latent_encoder": {
        "image_path": "/path/to/image.jpg",
        "vae_model_name": "qwen_image_vae.safetensors",
        "output_dir": "/path/to/output",
        "upscale_method": "lanczos",
        "megapixels": 1.0,
    },
    "text_encoder": {
        "image1_path": "/path/to/masked_person.jpg",
        "image2_path": "/path/to/cloth.png",
        "prompt": "by using the green masked area...",
        "negative_prompt": "",
        "clip_model_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
        "vae_model_name": "qwen_image_vae.safetensors",
    },
    "sampling": {
        "positive_encoding_file": "/path/to/positive.pt",
        "negative_encoding_file": "/path/to/negative.pt",
        "latent_file": "/path/to/latent.pt",
        "unet_model_name": "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
        "lora_model_name": "Qwen-Image-Lightning-4steps-V2.0.safetensors",
        "sampling_params": {
            "seed": 12345,
            "steps": 4,
            "cfg": 1.0,
            "sampler_name": "euler",
            "scheduler": "simple",
            "denoise": 1.0,
        },
        "model_transform_params": {"shift": 3, "strength": 1.0},
    },
    "decoding": {
        "latent_file": "/path/to/sampled_latent.pt",
        "vae_model_name": "qwen_image_vae.safetensors",
        "output_filename": "test_male_1",
        "output_dir": "/path/to/output",
        "output_format": "jpg",
    },
    "edit": {
        "image1_path": "/path/to/masked_person.jpg",
        "image2_path": "/path/to/cloth.png",
        "prompt": "by using the green masked area, put the cloth in picture 2 on the person in picture 1",
        "sampling_params": {"seed": 12345, "steps": 4, "cfg": 1.0},
        "output_filename": "test_male_1",
        "output_format": "jpg",
    },
}

RESPONSES: dict[str, dict[str, Any]] = {
    "latent_encoder": {
        "status": "success",
        "request_id": "uuid-here",
        "latent_file_path": "/path/to/output/latent_123.pt",
        "latent_shape": [1, 16, 1, 128, 128],
        "metadata": {"vae_model_name": "qwen_image_vae.safetensors", "scaled_size": [1024, 1024]},
    },
    "text_encoder": {
        "status": "success",
        "request_id": "uuid-here",
        "positive_encoding_file": "/path/to/positive_enc.pt",
        "negative_encoding_file": "/path/to/negative_enc.pt",
        "positive_shape": [1, 77, 3584],
        "negative_shape": [1, 77, 3584],
        "metadata": {},
    },
    "sampling": {
        "status": "success",
        "request_id": "uuid-here",
        "sampled_latent_file": "/path/to/sampled_latent.pt",
        "sampled_latent_shape": [1, 16, 1, 128, 128],
        "sampling_metadata": {"seed": 12345, "steps": 4, "sigmas": [1.0, 0.9, 0.75, 0.5, 0.0]},
    },
    "decoding": {
        "status": "success",
        "request_id": "uuid-here",
        "image_file_path": "/path/to/output/test_male_1_123.jpg",
        "image_shape": [1024, 1024, 3],
        "file_size": 245678,
        "metadata": {},
    },
}
# The one-piece edit answers like the decoder: one image file.
RESPONSES["edit"] = dict(RESPONSES["decoding"])
