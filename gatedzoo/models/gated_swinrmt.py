"""Gated-SwinRMT (Maity, Mondal & Roy, arXiv 2604.06014): Swin shifted windows with RMT's decomposed decayed retention.

An RMT-style backbone (convolutional stem, conditional positional encoding, conv-FFN, strided-conv downsampling)
whose token mixer works inside Swin windows, shifted by half a window on every second block. Inside a window the
attention is decomposed into a width-wise pass and a height-wise pass (RMT's decomposed MaSA): each pass attends along
one axis with a per-head distance decay ``gamma_h ** |delta|``, so the two passes compose into a Manhattan decay; there
is no learned positional bias. Three token mixers share everything else:

- ``"swat"``: sigmoid attention, balanced (mixed-sign) ALiBi slopes, multiplicative decay after the sigmoid, a
  SwiGLU-gated value projection and a per-head normalised output;
- ``"retention"``: softmax retention with an additive log-space decay, LCE (depth-wise 5x5 conv on V) and the G1
  sigmoid gate projected from the block input, applied after LCE and before ``W_O``;
- ``"rmt"``: the baseline, decayed softmax retention with LCE and no gates.

Windows are handled per axis: an axis of length ``L`` is cut into segments of at most ``window_size`` tokens (offset by
the shift on shifted blocks; the last segment is shorter when ``L`` is not a multiple), and every segment of every row
(or column) becomes one short sequence of the attention core, padded at the end to the window length and masked with
``seq_lens``. This is exactly Swin's cyclic shift with its region mask, and non-divisible sizes need no padding of the
feature map. Every attention call goes through :func:`gatedzoo.kernels.attention`. Design choices the paper leaves
open are listed with their reasons in ``docs/models/gated_swinrmt.md``.

The models are registered with the gatedzoo zoo and with timm: after ``import gatedzoo``,
``timm.create_model("gated_swinrmt_swat_tiny", pretrained=True)`` loads the shipped Fashion-MNIST weights.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model as timm_register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from gatedzoo.kernels import attention
from gatedzoo.layers import alibi_slopes, retention_log_decay
from gatedzoo.zoo import ZooMixin
from gatedzoo.zoo import register_model as zoo_register_model
from gatedzoo.zoo.registry import WEIGHTS_DIR

__all__ = ["GatedSwinRMT", "GatedSwinRMTBlock", "WindowRetention", "VARIANTS"]

VARIANTS = ("swat", "retention", "rmt")
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                        "Ankle boot")
_segment_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}


def axis_segments(length: int, window: int, shift: int) -> list[tuple[int, int]]:
    """``(start, size)`` of the windows along one axis of ``length`` tokens (every size ``<= window``).

    With ``shift > 0`` the window grid is offset by ``shift``: the first segment holds the first ``shift`` tokens.
    """
    bounds = [0] + list(range(shift if shift > 0 else window, length, window)) + [length]
    return [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _segment_index(length: int, window: int, shift: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          int]:
    """Gather index into the segment slots, its inverse, the segment lengths and the segment count (cached).

    Slot ``s * window + t`` holds token ``start_s + t`` (or the zero token ``length`` past the segment's end).
    Under ``torch.compile`` the tensors are built inside the graph (constants of the graph) and never cached:
    a tensor made inside a compiled region and kept in a global would be an output of the region, which CUDA-graph
    replays (``mode="reduce-overhead"``) overwrite.
    """
    key = (length, window, shift, str(device))
    if key in _segment_cache and not torch.compiler.is_compiling():
        return _segment_cache[key]
    segs = axis_segments(length, window, shift)
    gather = [s + t if t < n else length for s, n in segs for t in range(window)]
    scatter = [i * window + t for i, (_, n) in enumerate(segs) for t in range(n)]
    lens = [n for _, n in segs]
    out = (torch.tensor(gather, device=device), torch.tensor(scatter, device=device),
           torch.tensor(lens, device=device, dtype=torch.int32), len(segs))
    if not torch.compiler.is_compiling():
        _segment_cache[key] = out
    return out


class Stem(nn.Module):
    """RMT's convolutional stem: four 3x3 convs (channels C/2, C/2, C, C) with BatchNorm, GELU between them.

    Args:
        in_chans (int): input channels. dim (int): output channels ``C``.
        stride (int): total stride, 4 (RMT, 224-pixel images) or 2 (small images: 28-32 pixels). Default: ``4``.
        min_size (int): smallest accepted image side (the network's total stride). Default: ``stride``.

    Shapes: ``[B, in_chans, H, W]`` float -> ``[B, C, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_chans: int, dim: int, stride: int = 4, min_size: int | None = None):
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"Gated-SwinRMT: stem_stride={stride}; use 4 (224-pixel images) or 2 (small images).")
        self.in_chans, self.stride, self.min_size = in_chans, stride, min_size or stride
        strides, chans = (2, 1, stride // 2, 1), (dim // 2, dim // 2, dim, dim)
        layers, prev = [], in_chans
        for i, (s, c) in enumerate(zip(strides, chans)):
            layers += [nn.Conv2d(prev, c, 3, s, 1, bias=False), nn.BatchNorm2d(c)]
            if i < 3:
                layers.append(nn.GELU())
            prev = c
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"Gated-SwinRMT: expected a float image batch [B, C, H, W], got {x.dtype} "
                             f"{list(x.shape)}; convert with ToTensor / x.float() and add the batch dimension.")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"Gated-SwinRMT: the model takes {self.in_chans}-channel images but got {x.shape[1]} channels. Convert "
                f"the images (grey <-> RGB), or build the model with in_chans={x.shape[1]}: "
                f"timm.create_model(name, pretrained=True, in_chans={x.shape[1]}) adapts the stem weights."
            )
        if min(x.shape[-2:]) < self.min_size:
            # stem_stride=2 is the smallest stem: advising it to a model that has it would send the user in a circle
            other = "or build the model with stem_stride=2 or fewer stages for small images" if self.stride == 4 \
                else "this model already has the small-image stem, stem_stride=2; fewer stages would lower the minimum"
            raise ValueError(f"Gated-SwinRMT: images of {x.shape[-2]}x{x.shape[-1]} pixels are smaller than the "
                             f"network's total stride {self.min_size}; resize them to at least {self.min_size} pixels "
                             f"a side ({other}).")
        return self.conv(x)


class WindowRetention(nn.Module):
    """Decomposed window attention: a width pass then a height pass inside (shifted) windows, per-head decay.

    Args:
        dim (int): channels ``C``. num_heads (int): heads ``H`` (``C % H == 0``).
        window_size (int): window side; shrinks to the feature-map side when that is smaller (adaptive windows).
        shift (bool): offset the windows by half a window (Swin's shifted windows); ignored when one window covers
            the axis.
        variant (str): ``"swat"``, ``"retention"`` or ``"rmt"`` (see the module docstring).
        decay_init (float), heads_range (float): the RMT schedule ``gamma_h = 1 - 2^-(decay_init + heads_range*h/H)``.
        backend (str): passed to :func:`gatedzoo.kernels.attention`. Default: ``"auto"``.

    Shapes: ``[B, Hf, Wf, C]`` (channels last) -> the same.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: bool = False, variant: str = "swat",
                 decay_init: float = 2.0, heads_range: float = 4.0, backend: str = "auto"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Gated-SwinRMT: variant={variant!r}; use one of {VARIANTS}.")
        if dim % num_heads:
            raise ValueError(f"Gated-SwinRMT: dim {dim} is not divisible by num_heads {num_heads}; change one of them.")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.window_size, self.shift, self.variant, self.backend = window_size, shift, variant, backend
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.u_proj = nn.Linear(dim, dim) if variant == "swat" else None
        self.gate_proj = nn.Linear(dim, dim) if variant == "retention" else None
        self.lce = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.out_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if variant == "swat" else None
        self.out_proj = nn.Linear(dim, dim)
        # fixed per-head schedules (as RMT): derived from the config, so kept out of the state dict
        self.register_buffer("log_gamma", retention_log_decay(num_heads, decay_init, heads_range), persistent=False)
        slopes = alibi_slopes(num_heads, balanced=True) if variant == "swat" else torch.zeros(num_heads)
        self.register_buffer("slopes", slopes, persistent=False)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_normal_(proj.weight, gain=1.0 if proj is self.out_proj else 2 ** -2.5)
            proj.rmt_init = True

    def _core(self, q, k, v, seq_lens):
        if self.variant == "swat":
            return attention(q, k, v, activation="sigmoid", alibi_slopes=self.slopes,
                             decay=self.log_gamma, decay_mode="multiplicative", seq_lens=seq_lens,
                             backend=self.backend)
        return attention(q, k, v, activation="softmax", decay=self.log_gamma, decay_mode="additive",
                         seq_lens=seq_lens, backend=self.backend)

    def _axis_pass(self, q, k, v):
        """Attend along dim 1 of ``[N, L, H, D]`` tensors inside the axis windows."""
        n, length = q.shape[:2]
        window = min(self.window_size, length)
        shift = window // 2 if self.shift and length > self.window_size else 0
        if shift == 0 and length % window == 0:
            view = lambda t: t.reshape(n * (length // window), window, *t.shape[2:])  # noqa: E731
            return self._core(view(q), view(k), view(v), None).reshape(q.shape)
        gather, scatter, lens, nseg = _segment_index(length, window, shift, q.device)

        def slots(t):
            t = torch.cat([t, t.new_zeros(n, 1, *t.shape[2:])], dim=1)
            return t[:, gather].reshape(n * nseg, window, *t.shape[2:])

        out = self._core(slots(q), slots(k), slots(v), lens.repeat(n))
        return out.reshape(n, nseg * window, *out.shape[2:])[:, scatter]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, Hf, Wf, C = x.shape
        heads = (B, Hf, Wf, self.num_heads, self.head_dim)
        q, k = self.q_proj(x).view(heads), self.k_proj(x).view(heads)
        v = self.v_proj(x)
        if self.u_proj is not None:
            v = v * F.silu(self.u_proj(x))
        rows = lambda t: t.reshape(B * Hf, Wf, self.num_heads, self.head_dim)  # noqa: E731
        cols = lambda t: t.transpose(1, 2).reshape(B * Wf, Hf, self.num_heads, self.head_dim)  # noqa: E731
        out = self._axis_pass(rows(q), rows(k), rows(v.view(heads))).view(heads)
        out = self._axis_pass(cols(q), cols(k), cols(out)).view(B, Wf, Hf, self.num_heads, self.head_dim)
        out = out.transpose(1, 2)
        if self.out_norm is not None:
            out = self.out_norm(out)
        out = out.reshape(B, Hf, Wf, C) + self.lce(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.gate_proj is not None:
            out = out * torch.sigmoid(self.gate_proj(x))
        return self.out_proj(out)


class ConvFFN(nn.Module):
    """RMT's conv-FFN: ``fc2(h + dwconv3x3(h))`` with ``h = gelu(fc1(x))``. Shapes: ``[B, Hf, Wf, C]`` -> same."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        h = h + self.dwconv(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(self.drop(h))


class GatedSwinRMTBlock(nn.Module):
    """RMT block: ``x += dwconv3x3(x)`` (CPE); ``x += attn(LN(x))``; ``x += ffn(LN(x))`` (drop path, LayerScale).

    Args:
        dim, num_heads, window_size, shift, variant, decay_init, heads_range, backend: see :class:`WindowRetention`.
        mlp_ratio (float): FFN hidden width / ``dim``. drop_path (float): stochastic-depth rate.
        layer_scale (float, Optional): LayerScale initial value (``None``: off).

    Shapes: ``[B, Hf, Wf, C]`` -> same.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: bool, variant: str, mlp_ratio: float = 3.0,
                 drop_path: float = 0.0, layer_scale: float | None = None, decay_init: float = 2.0,
                 heads_range: float = 4.0, backend: str = "auto"):
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowRetention(dim, num_heads, window_size, shift, variant, decay_init, heads_range, backend)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        ls = layer_scale is not None
        self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale))) if ls else None
        self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale))) if ls else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        a = self.attn(self.norm1(x))
        x = x + self.drop_path(a if self.gamma1 is None else self.gamma1 * a)
        f = self.ffn(self.norm2(x))
        return x + self.drop_path(f if self.gamma2 is None else self.gamma2 * f)


class Stage(nn.Module):
    """Optional strided-conv downsampling (conv3x3 stride 2 + BatchNorm, as RMT) then blocks.

    Shapes: ``[B, C_in, H, W]`` -> ``[B, C, H', W']`` (channels first between stages, channels last inside).
    """

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, grad_checkpointing: bool = False, **kw):
        super().__init__()
        self.downsample = nn.Sequential(nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim)) \
            if downsample else nn.Identity()
        drop_paths = kw.pop("drop_paths")
        self.blocks = nn.ModuleList(
            GatedSwinRMTBlock(dim, shift=i % 2 == 1, drop_path=drop_paths[i], **kw) for i in range(depth)
        )
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and self.training else blk(x)
        return x.permute(0, 3, 1, 2).contiguous()


def _check_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"Gated-SwinRMT: global_pool={global_pool!r}; use 'avg' or '' (no pooling).")
    return global_pool


class GatedSwinRMT(ZooMixin, nn.Module):
    """Gated-SwinRMT image classifier / backbone with timm's model API.

    Args:
        img_size (int | tuple): nominal input size (recorded in the config; other sizes work). Default: ``224``.
        in_chans (int): input channels. Default: ``3``.
        num_classes (int): classes (0: no classifier, ``forward`` returns pooled features). Default: ``1000``.
        mixer (str): the attention variant, ``"swat"``, ``"retention"`` or ``"rmt"``. Default: ``"swat"``.
        embed_dims (tuple[int]): channels per stage. depths (tuple[int]): blocks per stage.
        num_heads (tuple[int]): heads per stage. heads_range (tuple[float]): decay spread per stage (RMT: 4,4,6,6).
        window_size (int): window side (adaptive: min with the feature-map side). Default: ``7``.
        mlp_ratio (float): conv-FFN width ratio. Default: ``3.0``.
        stem_stride (int): 4 for 224-pixel images, 2 for small (28-32 pixel) images. Default: ``4``.
        drop_rate (float): dropout before the classifier. drop_path_rate (float): stochastic depth (linear rule).
        layer_scale (float, Optional): LayerScale init (``None``: off). decay_init (float): RMT's ``initial_value``.
        global_pool (str): ``"avg"``, or ``""``: no pooling, the classifier scores every position (logits
            ``[B, num_classes, h, w]``, as timm's ConvNeXt head without pooling). Default: ``"avg"``.
        backend (str): attention backend. Default: ``"auto"``.

    Input ``[B, in_chans, H, W]`` float (normalised with the config's mean/std) -> logits ``[B, num_classes]``.
    """

    zoo_adaptable = ("head",)
    zoo_input_convs = ("stem.conv.0.weight",)  # adapted when in_chans differs from the weights' (grey <-> RGB)

    def __init__(self, img_size=224, in_chans: int = 3, num_classes: int = 1000, mixer: str = "swat",
                 embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16),
                 heads_range=(4.0, 4.0, 6.0, 6.0), window_size: int = 7, mlp_ratio: float = 3.0, stem_stride: int = 4,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.1, layer_scale: float | None = None,
                 decay_init: float = 2.0, global_pool: str = "avg", backend: str = "auto"):
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(num_heads) == len(heads_range)):
            raise ValueError("Gated-SwinRMT: embed_dims, depths, num_heads and heads_range need one entry per stage.")
        _check_pool(global_pool)
        self.num_classes, self.global_pool, self.mixer = num_classes, global_pool, mixer
        self.num_features = self.head_hidden_size = embed_dims[-1]
        reduction = stem_stride * 2 ** (len(depths) - 1)
        self.stem = Stem(in_chans, embed_dims[0], stem_stride, min_size=reduction)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, prev, start, red = [], embed_dims[0], 0, stem_stride
        self.feature_info = [dict(num_chs=embed_dims[0], reduction=stem_stride, module="stem")]
        for i, (dim, depth, heads, hr) in enumerate(zip(embed_dims, depths, num_heads, heads_range)):
            red = red * (2 if i > 0 else 1)
            stages.append(Stage(prev, dim, depth, downsample=i > 0, num_heads=heads, window_size=window_size,
                                variant=mixer, mlp_ratio=mlp_ratio, drop_paths=dpr[start:start + depth],
                                layer_scale=layer_scale, decay_init=decay_init, heads_range=hr, backend=backend))
            self.feature_info.append(dict(num_chs=dim, reduction=red, module=f"stages.{i}"))
            prev, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # q/k/v/out keep the RMT initialisation set in WindowRetention; the rest follows timm's ViT/Swin default
        if isinstance(m, nn.Linear) and not getattr(m, "rmt_init", False):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_backend(self, backend: str) -> None:
        """Route every attention call to ``backend`` (``"auto"``, ``"triton"``, ``"reference"``)."""
        for m in self.modules():
            if isinstance(m, WindowRetention):
                m.backend = backend

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.downsample", (0,)),
                                                                             (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                                             (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def timm_pretrained_cfg(self, config: dict) -> dict:
        """timm's ``pretrained_cfg`` for these weights, from ``config`` (the zoo config being saved).

        :func:`gatedzoo.zoo.save_pretrained` writes it as the ``pretrained_cfg`` entry of ``config.json`` (timm's Hub
        layout), so that ``timm.create_model("local-dir:<folder>")`` / ``("hf-hub:<repo>")`` read a gatedzoo folder:
        timm takes ``architecture``, ``model_args`` and ``label_names`` from the top level and the preprocessing
        and head size from this entry. Returns a JSON-able dict: ``num_classes`` (the classifier's outputs), the
        recorded ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct`` (when the config has them),
        ``first_conv``, ``classifier``, ``license``, ``paper_ids``.
        """
        base = _cfg()
        out = {k: base[k] for k in ("first_conv", "classifier", "license", "paper_ids")}
        out.update(num_classes=self.num_classes, fixed_input_size=False)
        pre = config.get("preprocessing") or {}
        out.update({k: pre[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct") if k in pre})
        return out

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: identity, pooled features out).

        The new head is untrained: the weights' class names and scores (``zoo_config["label_names"]``, ``["metrics"]``)
        no longer describe the model and are removed; name the new classes before ``save_pretrained``.
        """
        cfg = getattr(self, "zoo_config", None)
        if cfg is not None:
            cfg.pop("label_names", None)
            cfg.pop("metrics", None)
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` -> normalised last-stage features ``[B, C, H / 32, W / 32]`` (stride for stem 4)."""
        x = self.stages(self.stem(x))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool ``[B, C, h, w]`` features and classify: ``[B, num_classes]``; ``pre_logits=True`` returns the pooled
        ``[B, C]``. With ``global_pool=""`` nothing is pooled: ``[B, num_classes, h, w]`` (``[B, C, h, w]``)."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        if pre_logits:
            return x
        if x.ndim == 2:
            return self.head(x)
        # the same linear classifier on every position (channels last), so pooled weights load and averaging these
        # logits over the positions gives the pooled model's logits
        return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# sizes: tiny is small enough to ship (Fashion-MNIST), small ~ RMT-T, base ~ the paper's 77-79M parameters
SIZES = {
    "tiny": dict(embed_dims=(32, 64, 128, 160), depths=(2, 2, 4, 1), num_heads=(2, 4, 8, 10), mlp_ratio=2.0,
                 drop_path_rate=0.05),
    "small": dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16), mlp_ratio=3.0,
                  drop_path_rate=0.1),
    "base": dict(embed_dims=(96, 192, 384, 768), depths=(2, 4, 24, 5), num_heads=(6, 12, 24, 24), mlp_ratio=3.0,
                 drop_path_rate=0.3, layer_scale=1e-6),
}
PAPER = "Gated-SwinRMT, arXiv 2604.06014 (2026); RMT, arXiv 2309.11523 (CVPR 2024)"


def _cfg(**kwargs) -> dict:
    return {**dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.9,
                   interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                   first_conv="stem.conv.0", classifier="head", license="apache-2.0", paper_ids="arXiv:2604.06014"),
            **kwargs}


def _shipped_cfg(arch: str, tag: str) -> dict:
    return _cfg(file=str(WEIGHTS_DIR / f"{arch}.{tag}" / "model.safetensors"), num_classes=10, input_size=(1, 28, 28),
                pool_size=(2, 2), crop_pct=1.0, interpolation="bilinear", mean=(0.2860,), std=(0.3530,),
                label_names=FASHION_MNIST_LABELS, description="trained on Fashion-MNIST by gatedzoo")


#: timm pretrained configs; an arch's first tag is its default (what ``pretrained=True`` loads)
default_cfgs = generate_default_cfgs({
    "gated_swinrmt_swat_tiny.fmnist": _shipped_cfg("gated_swinrmt_swat_tiny", "fmnist"),
    "gated_swinrmt_retention_tiny.fmnist": _shipped_cfg("gated_swinrmt_retention_tiny", "fmnist"),
    **{f"gated_swinrmt_{v}_{s}": _cfg() for v in VARIANTS for s in SIZES
       if (v, s) not in (("swat", "tiny"), ("retention", "tiny"))},
})


def _shipped_args(arch: str, tag: str) -> dict:
    """Architecture arguments the shipped ``arch.tag`` weights were trained with (empty if not shipped)."""
    path = WEIGHTS_DIR / f"{arch}.{tag}" / "config.json"
    if not path.exists():
        return {}
    args = json.loads(path.read_text()).get("model_args", {})
    return {k: v for k, v in args.items() if k not in ("mixer", "backend")}


def _overlay_with_file_config(overlay: dict | None) -> dict | None:
    """timm's ``pretrained_cfg_overlay=dict(file=...)`` pointing at gatedzoo weights: add the head size and class
    names that the ``config.json`` beside the file records.

    timm compares the cfg's ``num_classes`` with the model's and drops the file's classifier when they differ, so
    without this a fine-tuned 3-class file loaded with ``num_classes=3`` would silently get a random head (the cfg
    still says the shipped weights' 10). Entries the caller put in the overlay win.
    """
    if not overlay or not overlay.get("file"):
        return overlay
    config = Path(overlay["file"]).with_name("config.json")
    if not config.is_file():
        return overlay
    saved = json.loads(config.read_text())
    found = {"num_classes": saved.get("model_args", {}).get("num_classes"), "label_names": saved.get("label_names")}
    return {**{k: v for k, v in found.items() if v is not None}, **overlay}


def _create(arch: str, variant: str, size: str, pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """Build through timm's builder (pretrained cfg, weight loading with head / in_chans adaptation, features_only)."""
    cfg = kwargs.pop("pretrained_cfg", None)
    overlay = _overlay_with_file_config(kwargs.pop("pretrained_cfg_overlay", None))
    tag = cfg if isinstance(cfg, str) else None
    entry = default_cfgs.get(arch)
    if tag is None and cfg is None and pretrained and entry is not None:
        tag = entry.tags[0] or None
    shipped = _shipped_args(arch, tag) if tag else {}
    if shipped:
        kwargs = {**shipped, **kwargs}
    elif cfg is None and tag is None:
        # an untrained model gets the generic ImageNet-style cfg, not the defaults of a shipped tag
        cfg = {**_cfg(), "architecture": arch}
        kwargs.setdefault("num_classes", 1000)
        kwargs.setdefault("in_chans", 3)
    kwargs = {**SIZES[size], **kwargs, "mixer": variant}
    # feature_info lists the stem and then every stage; the stem has stage 0's stride (stage 0 does not downsample),
    # so features_only defaults to the stages alone: strictly increasing strides, as FPN-style necks expect
    # (an explicit out_indices, e.g. (0, 1, 2, 3, 4) with the stem, still wins)
    stages = tuple(range(1, len(kwargs["depths"]) + 1))
    model = build_model_with_cfg(GatedSwinRMT, arch, pretrained, pretrained_cfg=cfg or tag,
                                 pretrained_cfg_overlay=overlay,
                                 feature_cfg=dict(flatten_sequential=True, out_indices=stages), **kwargs)
    classes = getattr(model, "num_classes", None)
    names = model.pretrained_cfg.get("label_names")
    if classes is not None and names is not None and len(names) != classes:
        # a new head (num_classes=) is untrained: the weights' class names would name its outputs wrongly; timm's
        # own exports drop label names when the head size changes, and so does gatedzoo.create_model
        model.pretrained_cfg = model.default_cfg = {k: v for k, v in model.pretrained_cfg.items()
                                                    if k != "label_names"}
    return model


_register = partial(zoo_register_model, family="gated_swinrmt", task="image_classification", paper=PAPER,
                    license="Apache-2.0")


@_register
@timm_register_model
def gated_swinrmt_swat_tiny(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """Gated-SwinRMT-SWAT, tiny (1.43 M parameters): sigmoid, balanced ALiBi, multiplicative decay, SwiGLU value."""
    return _create("gated_swinrmt_swat_tiny", "swat", "tiny", pretrained, **kwargs)


@_register
@timm_register_model
def gated_swinrmt_swat_small(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """Gated-SwinRMT-SWAT, small (RMT-T-like widths)."""
    return _create("gated_swinrmt_swat_small", "swat", "small", pretrained, **kwargs)


@_register
@timm_register_model
def gated_swinrmt_swat_base(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """Gated-SwinRMT-SWAT, base (the paper's ~78 M parameters)."""
    return _create("gated_swinrmt_swat_base", "swat", "base", pretrained, **kwargs)


@_register
@timm_register_model
def gated_swinrmt_retention_tiny(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """Gated-SwinRMT-Retention, tiny: softmax retention, additive log-space decay, LCE, G1 output gate."""
    return _create("gated_swinrmt_retention_tiny", "retention", "tiny", pretrained, **kwargs)


@_register
@timm_register_model
def gated_swinrmt_retention_small(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """Gated-SwinRMT-Retention, small."""
    return _create("gated_swinrmt_retention_small", "retention", "small", pretrained, **kwargs)


@_register
@timm_register_model
def gated_swinrmt_retention_base(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """Gated-SwinRMT-Retention, base (the paper's ~78 M parameters)."""
    return _create("gated_swinrmt_retention_base", "retention", "base", pretrained, **kwargs)


@_register
@timm_register_model
def gated_swinrmt_rmt_tiny(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """RMT-style baseline on the same backbone, tiny: decayed softmax retention with LCE, no gates."""
    return _create("gated_swinrmt_rmt_tiny", "rmt", "tiny", pretrained, **kwargs)


@_register
@timm_register_model
def gated_swinrmt_rmt_small(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """RMT-style baseline, small."""
    return _create("gated_swinrmt_rmt_small", "rmt", "small", pretrained, **kwargs)


@_register
@timm_register_model
def gated_swinrmt_rmt_base(pretrained: bool = False, **kwargs) -> GatedSwinRMT:
    """RMT-style baseline, base."""
    return _create("gated_swinrmt_rmt_base", "rmt", "base", pretrained, **kwargs)
