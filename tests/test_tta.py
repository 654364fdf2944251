"""Test-time augmentation: every transform is undone exactly, so an equivariant model is unchanged."""

import pytest
import torch

from bloodlib.engine.tta import tta_probabilities, tta_transforms


class PixelwiseModel(torch.nn.Module):
    """A 1x1 convolution: equivariant to flips and rotations."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("kind", [None, "flips", "dihedral"])
def test_equivariant_model_is_unchanged(kind):
    torch.manual_seed(0)
    model, x = PixelwiseModel(), torch.rand(2, 3, 8, 8)
    expected = model(x).softmax(1)
    got = tta_probabilities(model, x, kind)
    assert torch.allclose(got, expected, atol=1e-6)
    assert len(tta_transforms(kind)) == {None: 1, "flips": 4, "dihedral": 8}[kind]


def test_transforms_are_exact_inverses_on_non_symmetric_input():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    for forward, inverse in tta_transforms("dihedral"):
        assert torch.equal(inverse(forward(x)), x)
    assert len({tuple(f(x).flatten().tolist()) for f, _ in tta_transforms("dihedral")}) == 8


def test_bad_kind_and_non_square_dihedral():
    with pytest.raises(ValueError, match="Unknown test-time"):
        tta_transforms("rotate45")
    with pytest.raises(ValueError, match="square"):
        tta_probabilities(PixelwiseModel(), torch.rand(1, 3, 4, 6), "dihedral")
