"""Paper 3's channel and spatial attention: shapes, softmax normalisation, compositions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bloodlib.models.attention import (ATTENTION_KINDS, AttentionSequence, ChannelAttention,
                                       SpatialAttention, attention_modules, build_attention)


def _randomise(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    return module


def test_channel_attention_softmax_over_channels():
    ca = _randomise(ChannelAttention(8))
    x = torch.randn(2, 8, 5, 7)
    w = ca.weights(x)
    assert w.shape == (2, 8, 1, 1) and (w > 0).all()
    assert torch.allclose(w.sum(dim=1), torch.ones(2, 1, 1))
    y = ca(x)
    assert y.shape == x.shape and torch.allclose(y, x * w * 8)
    assert torch.equal(ca.last_weights, w)


def test_spatial_attention_softmax_over_positions():
    sa = _randomise(SpatialAttention(4))
    x = torch.randn(3, 4, 6, 5)
    w = sa.weights(x)
    assert w.shape == (3, 1, 6, 5)
    assert torch.allclose(w.sum(dim=(-1, -2)), torch.ones(3, 1))
    assert torch.allclose(sa(x), x * w * 30)
    assert not torch.allclose(w, torch.full_like(w, 1 / 30))  # not uniform once trained


def test_untrained_attention_is_identity():
    x = torch.randn(2, 16, 8, 8)
    for kind in ATTENTION_KINDS:
        assert torch.allclose(build_attention(kind, 16)(x), x, atol=1e-5), kind


def test_compositions_order_and_factory():
    ca_sa, sa_ca = build_attention("ca_sa", 8), build_attention("SA-CA", 8)
    assert isinstance(ca_sa, AttentionSequence)
    assert [type(m) for m in ca_sa] == [ChannelAttention, SpatialAttention]
    assert [type(m) for m in sa_ca] == [SpatialAttention, ChannelAttention]
    assert isinstance(build_attention("none", 8), nn.Identity)
    with pytest.raises(ValueError, match="ca_sa"):
        build_attention("cbam", 8)
    x = torch.randn(1, 8, 4, 4)
    _randomise(ca_sa)
    expected = ca_sa[1](ca_sa[0](x))
    assert torch.allclose(ca_sa(x), expected)
    assert set(attention_modules(nn.Sequential(ca_sa))) == {"0.0", "0.1"}


def test_attention_backpropagates():
    m = build_attention("ca_sa", 4)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    m(x).square().sum().backward()
    assert all(p.grad is not None for p in m.parameters()) and x.grad is not None


def test_residual_attention_keeps_half_of_what_softmax_drops():
    ca, sa = ChannelAttention(8, residual=True), SpatialAttention(4, residual=True)
    x = torch.randn(2, 8, 5, 7)
    assert torch.allclose(ca(x), x, atol=1e-6)  # still the identity untrained
    with torch.no_grad():  # a collapsed softmax: every channel's weight on channel 0
        ca.conv.bias.copy_(torch.tensor([50.0] + [0.0] * 7))
    y = ca(x)
    assert torch.allclose(y[:, 1:], x[:, 1:] / 2, atol=1e-5)
    assert torch.allclose(y[:, :1], x[:, :1] * 4.5, atol=1e-5)  # (1 + 8) / 2
    _randomise(sa)
    z = torch.randn(3, 4, 6, 5)
    assert torch.allclose(sa(z), z * (1 + 30 * sa.weights(z)) / 2)
    built = build_attention("sa_ca", 4, residual=True)
    assert all(m.residual for m in built)


def test_logit_bound_stops_one_entry_taking_all_weight():
    import math
    ca, sa = ChannelAttention(8, logit_bound=1.0), SpatialAttention(4, logit_bound=1.0)
    x = torch.randn(2, 8, 5, 7)
    assert torch.allclose(ca(x), x, atol=1e-6)  # still the identity untrained
    with torch.no_grad():  # logits that collapse the unbounded softmax onto channel 0
        ca.conv.bias.copy_(torch.tensor([50.0] + [-50.0] * 7))
    w = ca.weights(x).flatten(1)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert torch.allclose(w[:, 0] / w[:, 1], torch.full((2,), math.exp(2.0)), rtol=1e-4)
    with torch.no_grad():
        sa.conv.weight.mul_(0).add_(100.0)
    z = torch.randn(3, 4, 6, 5)
    ratio = sa.weights(z).flatten(1)
    assert (ratio.max(1).values / ratio.min(1).values <= math.exp(2.0) + 1e-3).all()
    assert all(m.logit_bound == 2.0 for m in build_attention("ca_sa", 4, logit_bound=2))
    with pytest.raises(ValueError, match="logit_bound"):
        ChannelAttention(4, logit_bound=0)
