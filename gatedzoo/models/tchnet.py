"""TCH-Net with Cross-Branch Gated Attention Fusion (CB-GAF) for network-flow intrusion detection.

After TCHNetV3 (Ammar-ss/TCH-Net, arXiv 2604.11324): a shared residual feature projection feeds three branches,
a temporal one (separable-conv + BiGRU, stride-2 BiGRU and pre-norm Transformer paths merged by attention), a
statistical one (an MLP over the window mean) and a context one (dataset and device embeddings). CB-GAF lets each
branch token attend to the two others (softmax over the other tokens) and mixes the token with what it read
through a feature-wise sigmoid gate (:class:`gatedzoo.layers.GatedFusion`); the fused tokens are concatenated and
normalised. A residual MLP head classifies, and an auxiliary decoder reconstructs the window's mean numeric input.

Inputs: ``x_num`` float ``[B, T, F]`` (scaled flow features of the ``T`` flows of a window, the last one being the
flow scored), ``x_cat`` long ``[B, T, K]`` (categorical codes, 0 = unknown), ``ctx`` long ``[B, 2]`` (dataset and
device ids). Output: logits ``[B, num_classes]``. With a novelty guard attached (:meth:`TCHNet.attach_novelty`), the
logits of an inference call are those of the guarded detector (:class:`gatedzoo.layers.KNNNoveltyGuard`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gatedzoo.kernels import attention
from gatedzoo.layers import GatedFusion, KNNNoveltyGuard, MultiheadAttention
from gatedzoo.zoo import ZooMixin, register_model


class ResidualProjection(nn.Module):
    """``x + LN(W2 dropout(GELU(LN(W1 x))))`` with ``W1: F -> 2F``, ``W2: 2F -> F``; shapes ``[..., F]``."""

    def __init__(self, dim: int, dropout: float = 0.15):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(2 * dim, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SqueezeExcite(nn.Module):
    """Channel re-weighting of ``[B, C, T]`` by ``sigmoid(MLP(mean_t x))`` (reduction ``r``)."""

    def __init__(self, channels: int, r: int = 8):
        super().__init__()
        hidden = max(channels // r, 4)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.mlp(x.mean(-1)))[..., None]


def _sep_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cin, 3, padding=1, groups=cin), nn.Conv1d(cin, cout, 1), nn.BatchNorm1d(cout))


class SepConvBlock(nn.Module):
    """Two depthwise-separable convs with BN/ReLU and squeeze-excite, 1x1 skip; ``[B, Cin, T] -> [B, Cout, T]``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.conv2 = _sep_conv(cin, cout), _sep_conv(cout, cout)
        self.se = SqueezeExcite(cout)
        self.skip = nn.Conv1d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.se(self.conv2(F.relu(self.conv1(x))))
        return F.relu(h + self.skip(x))


class PreNormBlock(nn.Module):
    """Pre-LN Transformer block on the shared attention layer (softmax); ``[B, T, D] -> [B, T, D]``."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, backend: str = "auto"):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, heads, activation="softmax", backend=backend)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ffn(self.norm2(x)))


class TemporalBranch(nn.Module):
    """Three paths over the window, each pooled to ``pool_len`` steps, merged by attention and averaged.

    Path 1: separable-conv residual blocks (max-pool /2 after the first two) -> BiGRU (2 layers).
    Path 2: stride-2 convolution -> BiGRU (1 layer). Path 3: linear embedding + learnable positions + CLS token ->
    pre-LN Transformer (CLS dropped). ``[B, T, F] -> [B, out_dim]``, ``out_dim = 2 gru + 2 gru2 + tf_dim``.
    """

    def __init__(self, in_dim: int, conv_channels: tuple[int, ...], gru: int, gru2: int, conv2: int, tf_dim: int,
                 tf_layers: int, tf_heads: int, tf_ffn: int, merge_heads: int, pool_len: int, max_len: int,
                 dropout: float, backend: str = "auto"):
        super().__init__()
        chans = (in_dim, *conv_channels)
        self.blocks = nn.ModuleList(SepConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.gru = nn.GRU(chans[-1], gru, num_layers=2, batch_first=True, bidirectional=True, dropout=dropout)
        self.conv2 = nn.Sequential(nn.Conv1d(in_dim, conv2, 3, stride=2, padding=1), nn.BatchNorm1d(conv2), nn.ReLU())
        self.gru2 = nn.GRU(conv2, gru2, batch_first=True, bidirectional=True)
        self.embed = nn.Linear(in_dim, tf_dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len + 1, tf_dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, tf_dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.tf = nn.ModuleList(PreNormBlock(tf_dim, tf_heads, tf_ffn, dropout, backend) for _ in range(tf_layers))
        self.out_dim = 2 * gru + 2 * gru2 + tf_dim
        self.norm = nn.LayerNorm(self.out_dim)
        self.merge = MultiheadAttention(self.out_dim, merge_heads, activation="softmax", backend=backend)
        self.pool_len, self.max_len = pool_len, max_len

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C] -> [B, pool_len, C]`` by adaptive average pooling over time."""
        return F.adaptive_avg_pool1d(x.transpose(1, 2), self.pool_len).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if t > self.max_len:
            raise ValueError(f"TCH-Net: window of {t} flows is longer than max_len={self.max_len}; rebuild the model "
                             "with a larger max_len or use shorter windows.")
        h = x.transpose(1, 2)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < 2:
                # ceil_mode keeps one step when a window is a single flow
                h = F.max_pool1d(h, 2, ceil_mode=True)
        p1 = self.gru(self._pool(h.transpose(1, 2)))[0]
        p2 = self._pool(self.gru2(self.conv2(x.transpose(1, 2)).transpose(1, 2))[0])
        z = torch.cat([self.cls.expand(b, -1, -1), self.embed(x)], 1) + self.pos[:, : t + 1]
        for blk in self.tf:
            z = blk(z)
        p3 = self._pool(z[:, 1:])
        merged = self.merge(self.norm(torch.cat([p1, p2, p3], -1)))
        return merged.mean(1)


class CBGAF(nn.Module):
    """Cross-Branch Gated Attention Fusion over ``n`` branch vectors.

    ``x_i = P_i h_i`` (width ``dim``); branch ``i`` reads ``c_i = softmax_j(q_i k_j / sqrt(dim)) v_j`` over the other
    branches ``j != i`` (single head, per-branch q/k/v projections, run by :func:`gatedzoo.kernels.attention`);
    ``f_i = g_i x_i + (1 - g_i) c_i`` with the vector gate ``g_i = sigmoid(W_i [x_i; c_i] + b_i)``
    (:class:`~gatedzoo.layers.GatedFusion`); output ``LN([f_1; ...; f_n])``.

    Args:
        in_dims (list[int]): widths of the branch vectors (at least two).
        dim (int): fusion width ``d``. Default: ``128``.
        fusion (str): ``"cbgaf"``, or ``"concat"`` for the no-fusion ablation (``LN([x_1; ...; x_n])``).
        backend (str): attention backend (see :func:`gatedzoo.kernels.attention`). Default: ``"auto"``.

    Shapes: ``hs[i]``: ``[B, in_dims[i]]`` -> ``[B, n * dim]``.
    """

    def __init__(self, in_dims: list[int], dim: int = 128, fusion: str = "cbgaf", backend: str = "auto"):
        super().__init__()
        if len(in_dims) < 2:
            raise ValueError(f"CBGAF needs at least two branches, got {len(in_dims)}.")
        if fusion not in ("cbgaf", "concat"):
            raise ValueError(f"fusion={fusion!r}; use 'cbgaf' or 'concat' (ablation).")
        n = len(in_dims)
        self.dim, self.fusion, self.backend = dim, fusion, backend
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in in_dims)
        if fusion == "cbgaf":
            self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in in_dims)
            self.gates = nn.ModuleList(GatedFusion(dim) for _ in in_dims)
            self.register_buffer("others", torch.tensor([[j for j in range(n) if j != i] for i in range(n)]),
                                 persistent=False)
        self.norm = nn.LayerNorm(n * dim)
        self.out_dim = n * dim

    def forward(self, hs: list[torch.Tensor]) -> torch.Tensor:
        xs = [p(h) for p, h in zip(self.proj, hs)]
        if self.fusion == "concat":
            return self.norm(torch.cat(xs, -1))
        b, n, d = xs[0].shape[0], len(xs), self.dim
        q, k, v = torch.stack([f(x) for f, x in zip(self.qkv, xs)], 1).chunk(3, -1)
        kk, vv = k[:, self.others], v[:, self.others]
        c = attention(q.reshape(b * n, 1, 1, d), kk.reshape(b * n, n - 1, 1, d), vv.reshape(b * n, n - 1, 1, d),
                      activation="softmax", backend=self.backend).reshape(b, n, d)
        return self.norm(torch.cat([g(x, c[:, i]) for i, (g, x) in enumerate(zip(self.gates, xs))], -1))


class FusionHead(nn.Module):
    """``z -> MLP(z) + W z`` (residual) -> logits; ``[B, in_dim] -> [B, num_classes]``."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden // 2), nn.GELU())
        self.skip = nn.Linear(in_dim, hidden // 2)
        self.fc = nn.Linear(hidden // 2, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, z: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        h = self.mlp(z) + self.skip(z)
        return h if pre_logits else self.fc(h)


class TCHNet(ZooMixin, nn.Module):
    """TCH-Net (temporal + statistical + context branches, CB-GAF, residual head, auxiliary decoder).

    Args:
        in_features (int): numeric features per flow ``F``. Default: ``46`` (the canonical vocabulary).
        num_classes (int): Default: ``2``.
        cat_cardinalities (list[int]): sizes of the categorical vocabularies (unknown bucket included). Default: none.
        cat_dim (int): embedding width per categorical feature. Default: ``8``.
        num_datasets (int), num_devices (int): context vocabulary sizes. Default: ``5``, ``6``.
        ctx_dim (int): width of each context embedding. Default: ``32``.
        conv_channels (list[int]): separable-conv widths of path 1. Default: ``[64, 128, 128]``.
        gru (int), gru2 (int), conv2 (int): BiGRU widths per direction of paths 1 and 2, path-2 conv width.
            Default: ``128``, ``64``, ``64``.
        tf_dim, tf_layers, tf_heads, tf_ffn (int): path-3 Transformer. Default: ``128, 2, 8, 512``.
        merge_heads (int): heads of the path-merging attention. Default: ``8``.
        pool_len (int): steps each path is pooled to. Default: ``8``.
        max_len (int): longest window. Default: ``64``.
        stat_hidden, stat_dim (int): statistical-branch MLP. Default: ``128``, ``64``.
        fusion_dim (int): CB-GAF width. Default: ``128``.
        fusion (str): ``"cbgaf"`` or ``"concat"`` (ablation without CB-GAF). Default: ``"cbgaf"``.
        raw_dim (int): width of the raw-feature path into the head. Default: ``64``.
        head_hidden (int): Default: ``256``.
        aux_hidden (int): auxiliary decoder width. Default: ``64``.
        dropout (float): Default: ``0.15``.
        attn_backend (str): backend of every attention call (``"auto"``, ``"reference"``, ``"sdpa"``, ``"triton"``).
            Default: ``"auto"``.
        novelty (dict): arguments of a :class:`~gatedzoo.layers.KNNNoveltyGuard` over the scored flow (``k``,
            ``ref_rows``, ``false_alarm_rate``); set by :meth:`attach_novelty`, so that loading weights rebuilds it.
            Default: none.
    """

    zoo_adaptable = ("head.fc",)

    def __init__(self, in_features: int = 46, num_classes: int = 2, cat_cardinalities: list[int] | None = None,
                 cat_dim: int = 8, num_datasets: int = 5, num_devices: int = 6, ctx_dim: int = 32,
                 conv_channels: list[int] | None = None, gru: int = 128, gru2: int = 64, conv2: int = 64,
                 tf_dim: int = 128, tf_layers: int = 2, tf_heads: int = 8, tf_ffn: int = 512, merge_heads: int = 8,
                 pool_len: int = 8, max_len: int = 64, stat_hidden: int = 128, stat_dim: int = 64,
                 fusion_dim: int = 128, fusion: str = "cbgaf", raw_dim: int = 64, head_hidden: int = 256,
                 aux_hidden: int = 64, dropout: float = 0.15, attn_backend: str = "auto", novelty: dict | None = None):
        super().__init__()
        cards = list(cat_cardinalities or [])
        self.in_features, self.num_classes = in_features, num_classes
        self.cat_embed = nn.ModuleList(nn.Embedding(c, cat_dim) for c in cards)
        width = in_features + cat_dim * len(cards)
        self.proj = ResidualProjection(width, dropout)
        self.temporal = TemporalBranch(width, tuple(conv_channels or (64, 128, 128)), gru, gru2, conv2, tf_dim,
                                       tf_layers, tf_heads, tf_ffn, merge_heads, pool_len, max_len, dropout,
                                       attn_backend)
        self.stat = nn.Sequential(nn.Linear(width, stat_hidden), nn.BatchNorm1d(stat_hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(stat_hidden, stat_dim), nn.GELU())
        self.dataset_embed, self.device_embed = nn.Embedding(num_datasets, ctx_dim), nn.Embedding(num_devices, ctx_dim)
        self.fusion = CBGAF([self.temporal.out_dim, 2 * ctx_dim, stat_dim], fusion_dim, fusion, attn_backend)
        self.raw = nn.Sequential(nn.Linear(width, raw_dim), nn.BatchNorm1d(raw_dim), nn.GELU())
        self.num_features = self.fusion.out_dim + raw_dim
        self.head = FusionHead(self.num_features, head_hidden, num_classes, dropout)
        self.aux = nn.Sequential(nn.Linear(self.fusion.out_dim, aux_hidden), nn.GELU(),
                                 nn.Linear(aux_hidden, in_features))
        self.novelty = KNNNoveltyGuard(in_features, cards, **novelty) if novelty else None

    def attach_novelty(self, guard: KNNNoveltyGuard | None) -> None:
        """Use ``guard`` on every inference call (``model.eval()``, no ``return_aux``): a flow the classifier calls
        normal becomes an attack when it is unlike the guard's normal reference flows. `None` removes it. Recorded in
        ``zoo_config['model_args']`` so that ``save_pretrained`` / ``create_model`` carry it."""
        cards = [e.num_embeddings for e in self.cat_embed]
        if guard is not None and (guard.num_features != self.in_features or guard.cards != cards):
            raise ValueError(f"the guard reads {guard.num_features} features and categories {guard.cards}, the model "
                             f"{self.in_features} and {cards}; fit it on this model's preprocessed flows.")
        self.novelty = guard
        args = getattr(self, "zoo_config", {}).get("model_args")
        if args is not None:
            if guard is None:
                args.pop("novelty", None)
            else:
                args["novelty"] = guard.config()
        if hasattr(self, "zoo_init_args"):  # config.json's record of the constructor call says the same
            self.zoo_init_args["novelty"] = None if guard is None else guard.config()

    def _inputs(self, x_num: torch.Tensor, x_cat: torch.Tensor | None) -> torch.Tensor:
        if x_num.ndim == 2:
            x_num = x_num[:, None]
        if x_num.ndim != 3 or x_num.shape[-1] != self.in_features:
            raise ValueError(f"TCH-Net expects x_num [B, T, {self.in_features}], got {list(x_num.shape)}; preprocess "
                             "the table with the FlowPreprocessor stored in model.zoo_config['preprocessing'].")
        if len(self.cat_embed) == 0:
            return x_num
        if x_cat is None:
            raise ValueError(f"TCH-Net was built with {len(self.cat_embed)} categorical features: pass x_cat.")
        if x_cat.ndim == 2:
            x_cat = x_cat[:, None]
        return torch.cat([x_num, *(e(x_cat[..., i]) for i, e in enumerate(self.cat_embed))], -1)

    def forward_features(self, x_num: torch.Tensor, x_cat: torch.Tensor | None = None,
                         ctx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(fused [B, n*fusion_dim], head input [B, num_features])``."""
        x = self.proj(self._inputs(x_num, x_cat))
        if ctx is None:
            ctx = torch.zeros(x.shape[0], 2, dtype=torch.long, device=x.device)
        h_c = torch.cat([self.dataset_embed(ctx[:, 0]), self.device_embed(ctx[:, 1])], -1)
        mean = x.mean(1)
        fused = self.fusion([self.temporal(x), h_c, self.stat(mean)])
        return fused, torch.cat([fused, self.raw(mean)], -1)

    def forward_head(self, z: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(z, pre_logits=pre_logits)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor | None = None, ctx: torch.Tensor | None = None,
                return_aux: bool = False):
        """Logits ``[B, num_classes]``; with ``return_aux`` also the reconstruction ``[B, F]`` of ``mean_t x_num``.

        In eval mode without ``return_aux``, an attached novelty guard turns the logits into those of the guarded
        detector (log-probabilities of the rule; training and ``return_aux`` calls always see the plain classifier).
        """
        fused, z = self.forward_features(x_num, x_cat, ctx)
        logits = self.head(z)
        if return_aux:
            return logits, self.aux(fused)
        if self.novelty is not None and not self.training:
            last = x_num if x_num.ndim == 2 else x_num[:, -1]
            cat = None if x_cat is None else (x_cat if x_cat.ndim == 2 else x_cat[:, -1])
            logits = self.novelty(logits, last, cat)
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """A new, untrained output layer of ``num_classes`` (0: none, the head returns its features)."""
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.head.skip.out_features, num_classes) if num_classes > 0 else nn.Identity()
        # the constructor call config.json records must build this head, not the one it replaced
        for args in (getattr(self, "zoo_config", {}).get("model_args"), getattr(self, "zoo_init_args", None)):
            if args is not None:
                args["num_classes"] = num_classes


class GatedFusionClassifier(ZooMixin, nn.Module):
    """User-chosen branch encoders fused by CB-GAF, then the residual head.

    Args:
        branches (dict[str, nn.Module]): encoders; each maps its input to ``[B, out_dim]``.
        branch_dims (dict[str, int]): output width of each encoder.
        num_classes (int): Default: ``2``.
        fusion_dim (int): Default: ``64``.
        head_hidden (int): Default: ``128``.
        dropout (float): Default: ``0.1``.
        fusion (str): ``"cbgaf"`` or ``"concat"``. Default: ``"cbgaf"``.

    ``forward(inputs)``: ``inputs`` is a dict ``name -> tensor`` (one input per branch) or one tensor given to every
    branch; returns logits ``[B, num_classes]``.
    """

    def __init__(self, branches: dict[str, nn.Module], branch_dims: dict[str, int], num_classes: int = 2,
                 fusion_dim: int = 64, head_hidden: int = 128, dropout: float = 0.1, fusion: str = "cbgaf"):
        super().__init__()
        if set(branches) != set(branch_dims):
            raise ValueError(f"branch_dims keys {sorted(branch_dims)} must match branches {sorted(branches)}.")
        self.names = list(branches)
        self.branches = nn.ModuleDict(branches)
        self.fusion = CBGAF([branch_dims[n] for n in self.names], fusion_dim, fusion)
        self.head = FusionHead(self.fusion.out_dim, head_hidden, num_classes, dropout)

    def forward(self, inputs) -> torch.Tensor:
        if isinstance(inputs, dict):
            missing = [n for n in self.names if n not in inputs]
            if missing:
                raise ValueError(f"GatedFusionClassifier: no input for branches {missing}.")
            hs = [self.branches[n](inputs[n]) for n in self.names]
        else:
            hs = [self.branches[n](inputs) for n in self.names]
        return self.head(self.fusion(hs))


@register_model(family="tchnet", task="flow_classification", paper="arXiv:2604.11324", license="Apache-2.0")
def tchnet(**kwargs) -> TCHNet:
    """TCH-Net with CB-GAF for flow-based intrusion detection (paper widths unless overridden)."""
    return TCHNet(**kwargs)
