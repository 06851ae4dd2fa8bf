"""Networks: a compact CNN sized for CPUs, MONAI backbones, heads for each task.

Every classification/regression network is an *encoder* (image → feature vector) followed by a
*head*; pretraining trains the encoder with a projection head, transfer reuses the encoder.

========================  ==========================================  ===============================
backbone                  what                                        ``width`` means
========================  ==========================================  ===============================
``compact3d``             plain CNN, ``depth`` stages of two 3×3(×3)   channels of the first stage
                          convolutions (the first strided), norm,     (doubling per stage); 16 →
                          ReLU; global average pooling. 2D or 3D.     ~0.9 M parameters, 128 features
``resnet10/18/34``        MONAI ResNet (Chen et al., MedicalNet)      64 × widen factor (64 = standard)
``densenet121``           MONAI DenseNet-121                          growth rate (32 = standard)
``unet``                  MONAI UNet, residual units (segmentation)   channels of the first level
``dynunet``               MONAI DynUNet (nnU-Net-like, segmentation)  filters of the first level
========================  ==========================================  ===============================
"""

from __future__ import annotations

import torch
from torch import nn

from sobre.learn._config import ModelConfig
from sobre.learn._losses import GradientReversal, fp32

__all__ = ["CompactCNN", "Classifier", "ContrastiveModel", "build_encoder", "build_segmenter", "encoder_spec"]


def _norm(kind: str, spatial_dims: int, ch: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d)(ch)
    if kind == "instance":
        return (nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d)(ch, affine=True)
    return nn.GroupNorm(min(8, ch), ch)


class CompactCNN(nn.Module):
    """A small plain CNN encoder for CPU training.

    Parameters
    ----------
    spatial_dims : {2, 3}
    in_channels : int
    width : int
        Channels of the first stage; stage ``i`` has ``width · 2**i``.
    depth : int
        Number of stages; each halves the resolution.
    norm : {"batch", "instance", "group"}

    Input ``(B, C, *spatial)`` → output ``(B, width · 2**(depth-1))``.

    Examples
    --------
    >>> net = CompactCNN(3, 1, width=4, depth=3)
    >>> net(torch.zeros(2, 1, 16, 16, 16)).shape
    torch.Size([2, 16])
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, width: int = 16, depth: int = 4,
                 norm: str = "batch") -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        layers: list[nn.Module] = []
        ch_in = in_channels
        for i in range(depth):
            ch = width * 2 ** i
            layers += [conv(ch_in, ch, 3, stride=2, padding=1, bias=False), _norm(norm, spatial_dims, ch),
                       nn.ReLU(inplace=True), conv(ch, ch, 3, padding=1, bias=False), _norm(norm, spatial_dims, ch),
                       nn.ReLU(inplace=True)]
            ch_in = ch
        self.body = nn.Sequential(*layers)
        self.pool = (nn.AdaptiveAvgPool3d if spatial_dims == 3 else nn.AdaptiveAvgPool2d)(1)
        self.out_features = ch_in
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)


class _DenseNetEncoder(nn.Module):
    def __init__(self, spatial_dims, in_channels, width, norm):
        super().__init__()
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1,
                          init_features=2 * width, growth_rate=width, norm=_monai_norm(norm))
        self.features = net.features
        self.pool = (nn.AdaptiveAvgPool3d if spatial_dims == 3 else nn.AdaptiveAvgPool2d)(1)
        self.out_features = net.class_layers.out.in_features

    def forward(self, x):
        return torch.flatten(self.pool(torch.relu(self.features(x))), 1)


def _monai_norm(kind: str):
    return {"batch": "batch", "instance": ("instance", {"affine": True}), "group": ("group", {"num_groups": 8})}[kind]


def encoder_spec(cfg: ModelConfig, spatial_dims: int, in_channels: int) -> dict:
    """What identifies an encoder's architecture (stored with its weights, checked on transfer)."""
    return {"backbone": cfg.backbone, "width": cfg.width, "depth": cfg.depth, "norm": cfg.norm,
            "spatial_dims": int(spatial_dims), "in_channels": int(in_channels)}


def build_encoder(cfg: ModelConfig, spatial_dims: int, in_channels: int) -> nn.Module:
    """Encoder with an ``out_features`` attribute: ``(B, C, *spatial) → (B, out_features)``."""
    b = cfg.backbone
    if b == "compact3d":
        return CompactCNN(spatial_dims, in_channels, cfg.width, cfg.depth, cfg.norm)
    if b.startswith("resnet"):
        from monai.networks.nets import resnet

        fn = getattr(resnet, b)
        net = fn(spatial_dims=spatial_dims, n_input_channels=in_channels, feed_forward=False,
                 widen_factor=cfg.width / 64, norm=_monai_norm(cfg.norm), conv1_t_stride=2)
        with torch.no_grad():
            net.eval()
            probe = net(torch.zeros(1, in_channels, *([32] * spatial_dims)))
            net.train()
        net.out_features = int(probe.shape[1])
        return net
    if b == "densenet121":
        return _DenseNetEncoder(spatial_dims, in_channels, cfg.width, cfg.norm)
    raise ValueError(f"backbone {b!r} is not an encoder")


class Classifier(nn.Module):
    """Encoder + linear head (classification logits or a regression value).

    With ``n_covariates > 0`` the head also sees that many (standardised) covariates, concatenated
    to the image features: ``forward(x, covariates)``. The head runs in fp32 whatever the autocast
    (a linear layer costs nothing; its outputs are the logits the loss and the scores come from).
    """

    def __init__(self, encoder: nn.Module, n_outputs: int, dropout: float = 0.0, n_covariates: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.n_covariates = int(n_covariates)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(encoder.out_features + self.n_covariates, n_outputs)

    def set_head(self, weight, bias) -> None:
        """Set the linear head to ``weight`` (K, D) and ``bias`` (K,) (e.g. a probe folded by ``Probe.linear``)."""
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight, dtype=self.head.weight.dtype))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=self.head.bias.dtype))

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dropout(self.encoder(x))
        with fp32(h):  # the logits (or value) in fp32, also under bf16 autocast
            h = h.float()
            if self.n_covariates:
                if covariates is None:
                    raise ValueError(f"this model needs {self.n_covariates} covariate(s)")
                h = torch.cat([h, covariates.float()], 1)
            return self.head(h)


class ContrastiveModel(nn.Module):
    """Encoder + MLP projection head (SimCLR); optional adversarial nuisance classifier.

    ``forward`` returns ``(projection, features)``; the loss acts on the projection, transfer
    uses the features.
    """

    def __init__(self, encoder: nn.Module, hidden: int = 256, out: int = 64, n_nuisance: int = 0,
                 reversal: float = 1.0) -> None:
        super().__init__()
        self.encoder = encoder
        d = encoder.out_features
        self.projector = nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, out))
        self.nuisance = None
        if n_nuisance > 1:
            self.nuisance = nn.Sequential(GradientReversal(reversal), nn.Linear(d, hidden), nn.ReLU(inplace=True),
                                          nn.Linear(hidden, n_nuisance))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.projector(h), h


def build_segmenter(cfg: ModelConfig, spatial_dims: int, in_channels: int, n_classes: int) -> nn.Module:
    """MONAI UNet (residual units) or DynUNet with ``depth`` levels, ``width`` channels at the first."""
    chans = tuple(cfg.width * 2 ** i for i in range(cfg.depth))
    if cfg.backbone == "unet":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=n_classes, channels=chans,
                    strides=(2,) * (cfg.depth - 1), num_res_units=1, norm=_monai_norm(cfg.norm),
                    dropout=cfg.dropout)
    from monai.networks.nets import DynUNet

    return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=n_classes,
                   kernel_size=[3] * cfg.depth, strides=[1] + [2] * (cfg.depth - 1),
                   upsample_kernel_size=[2] * (cfg.depth - 1), filters=list(chans), norm_name=_monai_norm(cfg.norm),
                   dropout=cfg.dropout or None)
