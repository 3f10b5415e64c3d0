"""RAM++ (Recognize Anything Plus, swin_l / 384) for tagging inference, in plain torch + timm.

Written from docs/models/rampp.md (section numbers below refer to it). The pipeline:

    pixels [B,3,S,S] ─ SwinImageEncoder ─► V [B,1+N,vision_width]  (pooled token first)
    V ─ image_proj ─► E [B,1+N,512]
    E[:,0] ─ DescriptionReweighting(label_embed) ─► q0 [B,T,512]  (one query per tag)
    q0 ─ ReLU(wordvec_proj) ─► h [B,T,768] ─ TaggingHead(h, E) ─► fc ─► logits [B,T]

Attribute names follow the official checkpoint where its keys dictate them (`image_proj`,
`label_embed`, `tagging_head.encoder.layer.N.crossattention...`), so loading is a rename of
the Swin keys only (checkpoint.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import cast

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from torch import nn


@dataclass(frozen=True)
class RamPlusConfig:
    """Architecture sizes. FULL is the released model; tiny ones are for fast tests."""

    image_size: int = 384
    patch_size: int = 4
    window_size: int = 12
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    embed_width: int = 512  # CLIP joint space of label_embed and image_proj
    head_width: int = 768
    head_layers: int = 2
    head_heads: int = 4
    head_intermediate: int = 3072
    num_tags: int = 4585
    descriptions_per_tag: int = 51

    @property
    def vision_width(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RamPlusConfig:
        data = dict(data)
        for key in ("depths", "num_heads"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


FULL = RamPlusConfig()


def tiny_config(num_tags: int, descriptions_per_tag: int = 3) -> RamPlusConfig:
    """The same architecture at a size that runs in milliseconds (for tests and smoke models)."""
    return RamPlusConfig(
        image_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 2), num_heads=(1, 2),
        embed_width=32, head_width=48, head_layers=2, head_heads=4, head_intermediate=96,
        num_tags=num_tags, descriptions_per_tag=descriptions_per_tag,
    )


class SwinImageEncoder(nn.Module):
    """Swin-L (window 12) without a classifier; returns the pooled token followed by all tokens (§3)."""

    def __init__(self, config: RamPlusConfig):
        super().__init__()
        # pretrained=False: weights come from the RAM++ checkpoint, never from a download.
        self.swin = cast(SwinTransformer, timm.create_model(  # create_model is typed as returning an nn.Module
            "swin_large_patch4_window12_384", pretrained=False, num_classes=0,
            img_size=config.image_size, patch_size=config.patch_size, window_size=config.window_size,
            embed_dim=config.embed_dim, depths=config.depths, num_heads=config.num_heads,
        ))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.swin.forward_features(pixels).flatten(1, 2)  # NHWC, final norm applied → [B,N,C]
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)  # [B,1+N,C]


class DescriptionReweighting(nn.Module):
    """Per tag, a softmax-weighted mean of its description embeddings, weighted by the image (§5)."""

    def forward(self, image_query: torch.Tensor, descriptions: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        # image_query [B,K]; descriptions [T,D,K]. fp32 throughout: the softmax with scale ≈ 14 is sensitive.
        c = F.normalize(image_query.float(), dim=-1)
        weights = (log_scale.float().exp() * torch.einsum("bk,tdk->btd", c, descriptions.float())).softmax(-1)
        return torch.einsum("btd,tdk->btk", weights, descriptions.float())  # [B,T,K]


def _layer_norm_fp32(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm with eps 1e-12 is only meaningful in fp32; compute it there whatever the model dtype."""
    weight = norm.weight.float()
    bias = norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).to(x.dtype)


class _CrossAttention(nn.Module):
    """Multi-head attention from tag queries to image tokens; BERT naming (`self`, `output`)."""

    class _Projections(nn.Module):
        def __init__(self, width: int, kv_width: int):
            super().__init__()
            self.query = nn.Linear(width, width)
            self.key = nn.Linear(kv_width, width)
            self.value = nn.Linear(kv_width, width)

    class _Output(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.dense = nn.Linear(width, width)
            self.LayerNorm = nn.LayerNorm(width, eps=1e-12)  # the checkpoint's key name

    def __init__(self, width: int, kv_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.self = self._Projections(width, kv_width)
        self.output = self._Output(width)

    def forward(self, h: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        b, t, width = h.shape
        split = lambda x: x.view(b, x.shape[1], self.heads, width // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.self.query(h)), split(self.self.key(image)), split(self.self.value(image))
        context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, width)
        return _layer_norm_fp32(self.output.LayerNorm, self.output.dense(context) + h)


class _Dense(nn.Module):
    def __init__(self, width_in: int, width_out: int):
        super().__init__()
        self.dense = nn.Linear(width_in, width_out)


class _FeedForwardOutput(_Dense):
    def __init__(self, width_in: int, width_out: int):
        super().__init__(width_in, width_out)
        self.LayerNorm = nn.LayerNorm(width_out, eps=1e-12)  # the checkpoint's key name


class TaggingLayer(nn.Module):
    """Cross-attention then FFN, post-norm residuals; no self-attention, so tags never see each other (§6)."""

    def __init__(self, config: RamPlusConfig):
        super().__init__()
        self.crossattention = _CrossAttention(config.head_width, config.embed_width, config.head_heads)
        self.intermediate = _Dense(config.head_width, config.head_intermediate)
        self.output = _FeedForwardOutput(config.head_intermediate, config.head_width)

    def forward(self, h: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.crossattention(h, image)
        f = F.gelu(self.intermediate.dense(h))
        return _layer_norm_fp32(self.output.LayerNorm, self.output.dense(f) + h)


class TaggingHead(nn.Module):
    """Query2Label-style decoder: `encoder.layer[l]` as in the checkpoint."""

    def __init__(self, config: RamPlusConfig):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(TaggingLayer(config) for _ in range(config.head_layers))

    def forward(self, h: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        for layer in cast(nn.ModuleList, self.encoder.layer):
            h = layer(h, image)
        return h


class RamPlus(nn.Module):
    """RAM++ tagging model: logits per tag for a batch of preprocessed images."""

    def __init__(self, config: RamPlusConfig = FULL):
        super().__init__()
        self.config = config
        self.visual_encoder = SwinImageEncoder(config)
        self.image_proj = nn.Linear(config.vision_width, config.embed_width)
        # Frozen CLIP text embeddings of every tag's descriptions, tag-major: row t·D + d (§2, §5).
        self.label_embed = nn.Parameter(
            torch.zeros(config.num_tags * config.descriptions_per_tag, config.embed_width), requires_grad=False
        )
        self.reweight_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)), requires_grad=False)
        self.reweighting = DescriptionReweighting()
        self.wordvec_proj = nn.Linear(config.embed_width, config.head_width)
        self.tagging_head = TaggingHead(config)
        self.fc = nn.Linear(config.head_width, 1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """E [B,1+N,512]: the image tokens in the joint space (token 0 is the pooled one)."""
        return self.image_proj(self.visual_encoder(pixels))

    def tag_logits(self, image: torch.Tensor, tag_index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B,T'] for all tags, or only those in tag_index (each tag is an independent query)."""
        c = self.config
        descriptions = self.label_embed.view(c.num_tags, -1, c.embed_width)
        if tag_index is not None:
            descriptions = descriptions[tag_index]
        q0 = self.reweighting(image[:, 0], descriptions, self.reweight_scale).to(image.dtype)
        h = F.relu(self.wordvec_proj(q0))
        return self.fc(self.tagging_head(h, image)).squeeze(-1)

    def forward(self, pixels: torch.Tensor, tag_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.tag_logits(self.encode_image(pixels), tag_index)
