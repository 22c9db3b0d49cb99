"""The weight files users hold, read without loading them: safetensors headers (keys, dtypes,
shapes, metadata), fp8 schemes and their scales, and what a file or folder is (a diffusers folder,
a ComfyUI single file, a Hugging Face snapshot), decided from its contents, never its name.

Imports errors and the model kinds only; the loaders import it.
"""
