"""The Qwen-Image-Edit pipeline services (latent encoder, text encoder, sampling, decoding, the
one-piece edit) and text-to-image generation, with the image and sampler code they share.

May import models, storage and config; never the engine or a door.
"""
