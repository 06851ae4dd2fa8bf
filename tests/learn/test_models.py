"""Backbones: the compact CNN and the MONAI encoders/segmenters build and run in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from sobre.learn._config import ModelConfig
from sobre.learn._models import Classifier, CompactCNN, ContrastiveModel, build_encoder, build_segmenter


@pytest.mark.parametrize("backbone,width", [("compact3d", 4), ("resnet10", 8), ("resnet18", 4), ("densenet121", 4)])
@pytest.mark.parametrize("dims", [2, 3])
def test_encoders_give_feature_vectors(backbone, width, dims):
    enc = build_encoder(ModelConfig(backbone=backbone, width=width, depth=3), dims, 2)
    size = 32 if backbone == "densenet121" else 16  # DenseNet-121 downsamples 32-fold
    x = torch.randn(2, 2, *([size] * dims))
    out = enc(x)
    assert out.shape == (2, enc.out_features)
    model = Classifier(enc, 3, dropout=0.1, n_covariates=1)
    assert model(x, torch.zeros(2, 1)).shape == (2, 3)


def test_compact_cnn_size_and_channels_last():
    net = CompactCNN(3, 1, width=8, depth=4)
    assert net.out_features == 64 and 0.2e6 < sum(p.numel() for p in net.parameters()) < 0.25e6
    x = torch.randn(2, 1, 24, 24, 24)
    ref = net.eval()(x)
    cl = net.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(ref, cl, atol=1e-5)


@pytest.mark.parametrize("backbone", ["unet", "dynunet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_segmenters_keep_the_grid(backbone, dims):
    net = build_segmenter(ModelConfig(backbone=backbone, width=4, depth=3), dims, 1, 3)
    x = torch.randn(1, 1, *([16] * dims))
    assert net.eval()(x).shape == (1, 3, *([16] * dims))


def test_contrastive_model_outputs_projection_and_features():
    m = ContrastiveModel(CompactCNN(3, 1, 4, 2), hidden=16, out=8, n_nuisance=3)
    z, h = m(torch.randn(4, 1, 8, 8, 8))
    assert z.shape == (4, 8) and h.shape == (4, 8) and m.nuisance(h).shape == (4, 3)
