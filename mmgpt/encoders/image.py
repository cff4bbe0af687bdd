"""Image encoder: ViT-style patch embedding + Transformer. Legend: B batch, P patches, D dim."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmgpt.encoders.base import EncoderOutput
from mmgpt.layers import LearnedTokens, Transformer, mark_pretrained


class PatchEmbed(nn.Module):
    """ViT's linear patch embedding: one ``patch_size`` x ``patch_size`` convolution with the same stride."""

    def __init__(self, *, dim: int, patch_size: int, in_channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)  # (B, D, H/p, W/p)


class ConvStem(nn.Module):
    """A convolutional stem (Xiao et al., 2021, "Early convolutions help transformers see better").

    log2(``patch_size``) stride-2 3x3 convolutions replace the single patchify layer: same token grid as
    :class:`PatchEmbed`, much faster to learn shapes on small data.
    """

    def __init__(self, *, dim: int, patch_size: int, in_channels: int = 3) -> None:
        super().__init__()
        n = patch_size.bit_length() - 1
        if patch_size < 2 or 2**n != patch_size:
            raise ValueError(f"ConvStem needs a power-of-two patch_size >= 2, got {patch_size}")
        self.patch_size = patch_size
        widths = [in_channels] + [max(dim // 2 ** (n - 1 - i), 8) for i in range(n)]
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, stride=2, padding=1))
            if i < n - 1:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, D, H/p, W/p)


class ImageEncoder(nn.Module):
    """Splits a (B, 3, H, W) image into non-overlapping patches, embeds them and runs Transformer blocks.

    Args:
        dim: width D.
        num_layers: Transformer blocks.
        num_heads: attention heads.
        image_size: expected H = W (position table size).
        patch_size: patch side; ``image_size`` must be divisible by it.
        in_channels: input channels.
        stem: the module that turns (B, C, H, W) into a (B, D, H/p, W/p) grid; default :class:`PatchEmbed`.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    #: The modality kind this encoder reads (checked against the data's declaration).
    modality_kind = "image"

    def __init__(
        self,
        *,
        dim: int,
        num_layers: int,
        num_heads: int,
        image_size: int = 32,
        patch_size: int = 8,
        in_channels: int = 3,
        stem: nn.Module | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        self.image_size = image_size
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = (
            stem if stem is not None else PatchEmbed(dim=dim, patch_size=patch_size, in_channels=in_channels)
        )
        self.pos_emb = LearnedTokens(1, self.num_patches, dim)
        self.drop = nn.Dropout(dropout)
        self.transformer = Transformer(
            dim=dim, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """x (B, 3, H, W) normalised image -> tokens (B, P, D); every patch is real (mask all True)."""
        B, _, H, W = x.shape
        if H != self.image_size or W != self.image_size:
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {H}x{W}")
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, P, D)
        h = self.drop(h + self.pos_emb.weight)
        patch_mask = torch.ones(B, self.num_patches, dtype=torch.bool, device=x.device)
        return EncoderOutput(self.transformer(h, mask=None), patch_mask)


class TorchvisionStem(nn.Module):
    """A torchvision ResNet trunk cut at stride ``patch_size`` plus a 1x1 projection to ``dim``: an image stem.

    Drop-in for :class:`ConvStem` (same (B, D, H/p, W/p) token grid).

    Args:
        dim: width D.
        patch_size: total stride, 4, 8, 16 or 32 (where the trunk is cut).
        name: a torchvision ResNet (``resnet18``, ``resnet34``, ``resnet50``...).
        weights: torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``) or None for random init
            (the default: nothing is downloaded unless asked for).
        freeze: keep the trunk's weights fixed.
    """

    _CUTS = {4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}

    def __init__(self, *, dim: int, patch_size: int = 8, name: str = "resnet18", weights: str | None = None,
                 freeze: bool = False) -> None:
        super().__init__()
        import torchvision

        if patch_size not in self._CUTS:
            raise ValueError(f"patch_size must be one of {sorted(self._CUTS)}, got {patch_size}")
        resnet = torchvision.models.get_model(name, weights=weights)
        if weights is not None:
            mark_pretrained(resnet)
        layers: list[nn.Module] = []
        for child_name, child in resnet.named_children():
            layers.append(child)
            if child_name == self._CUTS[patch_size]:
                break
        self.trunk = nn.Sequential(*layers)
        with torch.no_grad():
            channels = self.trunk(torch.zeros(1, 3, 2 * patch_size, 2 * patch_size)).shape[1]
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)
        self.patch_size = patch_size
        if freeze:
            for p in self.trunk.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.trunk(x))  # (B, D, H/p, W/p)
