"""Mask node types: channels to masks and back, GrowMask grows (and shrinks) by N pixels, and
ImageCompositeMasked pastes where the mask says."""

from __future__ import annotations

import pytest
import torch

from genserve.errors import GenserveError
from tests.unit.workflows.nodes.conftest import NodeCall


def test_image_to_mask_and_back(run_pure: NodeCall) -> None:
    image = torch.rand(2, 5, 7, 3)
    [green] = run_pure("ImageToMask", image=image, channel="green")
    assert torch.equal(green, image[..., 1])
    [grey] = run_pure("MaskToImage", mask=green)
    assert grey.shape == (2, 5, 7, 3) and torch.equal(grey[..., 2], green)
    with pytest.raises(GenserveError) as caught:
        run_pure("ImageToMask", image=image, channel="alpha")
    assert caught.value.details["field"] == "channel"


@pytest.mark.parametrize(("tapered", "expected"), [(True, 13), (False, 25)])
def test_grow_mask_grows_by_n_pixels(run_pure: NodeCall, tapered: bool, expected: int) -> None:
    mask = torch.zeros(1, 11, 11)
    mask[0, 5, 5] = 1.0
    [grown] = run_pure("GrowMask", mask=mask, expand=2, tapered_corners=tapered)
    # Two steps of a cross give a diamond of radius 2; of a square, a 5x5 square.
    assert int(grown.sum()) == expected
    assert grown[0, 5, 3] == 1.0 and grown[0, 5, 2] == 0.0
    [shrunk] = run_pure("GrowMask", mask=grown, expand=-2, tapered_corners=tapered)
    assert torch.equal(shrunk, mask)
    [same] = run_pure("GrowMask", mask=mask, expand=0, tapered_corners=True)
    assert torch.equal(same, mask)


def test_image_composite_masked_pastes_where_the_mask_is_set(run_pure: NodeCall) -> None:
    destination = torch.zeros(1, 8, 8, 3)
    source = torch.ones(1, 4, 4, 3)
    [plain] = run_pure(
        "ImageCompositeMasked", destination=destination, source=source, x=2, y=1, resize_source=False
    )
    assert plain[0, 1:5, 2:6].eq(1).all() and plain.sum() == 16 * 3
    assert destination.sum() == 0  # the input is not changed
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :1] = 1.0
    [half] = run_pure(
        "ImageCompositeMasked",
        destination=destination,
        source=source,
        x=6,
        y=6,
        resize_source=False,
        mask=mask,
    )
    # Clipped at the corner: a 2x2 visible part, whose left column (mask 1) is pasted.
    assert half[0, 6:8, 6].eq(1).all() and half[0, 6:8, 7].eq(0).all() and half.sum() == 2 * 3
    [stretched] = run_pure(
        "ImageCompositeMasked", destination=destination, source=source, x=0, y=0, resize_source=True
    )
    assert stretched.eq(1).all()
