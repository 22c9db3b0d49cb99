"""Model architectures the locked diffusers/transformers do not have (Qwen-Image 2.1's transformer
and VAE); plain torch modules, loaded by models/loaders."""
