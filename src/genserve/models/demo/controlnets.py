"""Demo control models for the demo transformer, as the single files ComfyUI users hold.

- ``controlnet/Qwen-Image-InstantX-ControlNet-{Union,Inpainting}.safetensors``: diffusers'
  ``QwenImageControlNetModel`` (one block copied from the demo transformer, as InstantX copies
  five from Qwen-Image), bare keys; the inpainting one takes the mask channel (68 inputs).
- ``controlnet/Qwen-Image-2512-Fun-Controlnet-Union-2602.safetensors``: VideoX-Fun's layout
  (``control_img_in`` over 132 features, ``control_blocks.N`` Qwen blocks with projections).
- ``model_patches/qwen_image_{canny,inpaint}_diffsynth_controlnet.safetensors``: DiffSynth
  block-wise ControlNets, one block per transformer block, the inpainting one with the mask.

The layers InstantX and DiffSynth start at zero get small random values instead, so a control
image visibly changes the demo's output (what the tests check).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNION = "Qwen-Image-InstantX-ControlNet-Union.safetensors"
INPAINTING = "Qwen-Image-InstantX-ControlNet-Inpainting.safetensors"
FUN = "Qwen-Image-2512-Fun-Controlnet-Union-2602.safetensors"
FUN_FEATURES = 132  # VideoX-Fun's 33 latent channels (control, mask, inpaint) in 2x2 patches
CANNY_PATCH = "qwen_image_canny_diffsynth_controlnet.safetensors"
INPAINT_PATCH = "qwen_image_inpaint_diffsynth_controlnet.safetensors"
MASK_FEATURES = 4  # one mask channel in 2x2 patches


def _save(module: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "genserve_demo": "1"})
    return path


def _randomise(modules: list[torch.nn.Module], generator: torch.Generator, std: float) -> None:
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_controlnets(folder: Path, transformer_folder: Path, seed: int) -> list[Path]:
    """The union and inpainting InstantX ControlNets in ``folder``, from the demo transformer."""
    from diffusers import QwenImageControlNetModel, QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel.from_pretrained(transformer_folder)
    config = transformer.config
    written = []
    for offset, (name, extra) in enumerate(((UNION, 0), (INPAINTING, MASK_FEATURES))):
        torch.manual_seed(seed + 10 + offset)
        controlnet = QwenImageControlNetModel(
            patch_size=config.patch_size,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            num_layers=1,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.joint_attention_dim,
            axes_dims_rope=tuple(config.axes_dims_rope),
            extra_condition_channels=extra,
        ).eval()
        for part in ("time_text_embed", "txt_norm", "img_in", "txt_in"):
            getattr(controlnet, part).load_state_dict(getattr(transformer, part).state_dict())
        controlnet.transformer_blocks[0].load_state_dict(transformer.transformer_blocks[0].state_dict())
        generator = torch.Generator().manual_seed(seed + 20 + offset)
        _randomise([controlnet.controlnet_x_embedder, *controlnet.controlnet_blocks], generator, 0.05)
        written.append(_save(controlnet, folder / name))
    written.append(_build_fun(folder / FUN, transformer, seed))
    return written


def _build_fun(path: Path, transformer: torch.nn.Module, seed: int) -> Path:
    """A VideoX-Fun ControlNet with one control block per demo block, copied from them."""
    from genserve.models.loaders.control import FunControlNet

    config = transformer.config
    torch.manual_seed(seed + 15)
    fun = FunControlNet(
        FUN_FEATURES,
        config.num_attention_heads * config.attention_head_dim,
        config.num_attention_heads,
        config.attention_head_dim,
        blocks=config.num_layers,
    ).eval()
    for block, source in zip(fun.control_blocks, transformer.transformer_blocks, strict=True):
        block.load_state_dict(source.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(seed + 25)
    projections = [fun.control_img_in, fun.control_blocks[0].before_proj]
    _randomise([*projections, *(block.after_proj for block in fun.control_blocks)], generator, 0.05)
    return _save(fun, path)


def build_model_patches(folder: Path, transformer_folder: Path, seed: int) -> list[Path]:
    """The canny and inpainting DiffSynth block-wise ControlNets in ``folder``."""
    from diffusers import QwenImageTransformer2DModel

    from genserve.models.loaders.control import BlockwiseControlNet

    config = QwenImageTransformer2DModel.load_config(transformer_folder)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    written = []
    for offset, (name, extra) in enumerate(((CANNY_PATCH, 0), (INPAINT_PATCH, MASK_FEATURES))):
        torch.manual_seed(seed + 30 + offset)
        patch = BlockwiseControlNet(num_layers=config["num_layers"], dim=dim, additional_in_dim=extra).eval()
        generator = torch.Generator().manual_seed(seed + 40 + offset)
        _randomise([block.output_proj for block in patch.controlnet_blocks], generator, 0.05)
        written.append(_save(patch, folder / name))
    return written
