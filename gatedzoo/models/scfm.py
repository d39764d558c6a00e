"""Single-cell foundation model: a bidirectional encoder over gene tokens with sigmoid or softmax attention.

A cell is a *set* of expressed genes. Each token is ``gene_embedding(gene) + value_embedding(bin)``, where ``bin`` is
the gene's per-cell expression quantile bin (scGPT-style value binning; ``0`` = not expressed, ``1 .. n_bins - 1``
from low to high, ``n_bins`` = masked). A learned CLS token is prepended; cells have different numbers of expressed
genes, so batches are right-padded and the valid lengths (``seq_lens``) go to the attention core, which masks padded
keys and, for sigmoid, uses the bias ``-log(n_valid_keys)`` of each cell. No positional encoding: gene order carries
no meaning. The sigmoid and softmax variants differ in the attention activation only (paper: arXiv 2604.27124).

Registered sizes (parameters with the default ``vocab_size=20000``): ``tiny`` 1.4M, ``small`` 3.4M, ``base`` 48M,
``large`` 129M (the stress-test configuration of the paper's >= 100M, 8K-token experiment).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gatedzoo.layers import MultiheadAttention
from gatedzoo.zoo import ZooMixin, register_model

PAD_ID = 0  # gene-vocabulary index of padding
CLS_ID = 1  # gene-vocabulary index of the CLS token (kept in the vocabulary so saved vocabularies stay aligned)
SPECIAL_TOKENS = ("<pad>", "<cls>")
POOLS = ("mean", "cls")
PAPER = "Sadashivaiah et al., Sigmoid Attention for single-cell Foundation Models, arXiv 2604.27124 (2026)"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``. ``x``: ``[B, T, C]``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, activation: str, dropout: float, backend: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, num_heads, activation=activation, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), seq_lens=seq_lens))
        return x + self.drop(self.mlp(self.norm2(x)))


class SCFM(ZooMixin, nn.Module):
    """Gene-token encoder with a masked-expression head and an optional cell-type head.

    Args:
        vocab_size (int): gene vocabulary size including the two special tokens (``<pad>`` = 0, ``<cls>`` = 1).
            Default: ``20000``.
        n_bins (int): expression bins; bin ``0`` means "not expressed", index ``n_bins`` is the mask token.
            Default: ``51`` (scGPT).
        dim (int): model width ``C``. Default: ``128``.
        depth (int): number of blocks. Default: ``4``.
        num_heads (int): attention heads. Default: ``4``.
        mlp_ratio (float): MLP hidden width / ``dim``. Default: ``4.0``.
        activation (str): ``"sigmoid"`` (bias ``-log n``) or ``"softmax"``. Default: ``"sigmoid"``.
        num_classes (int): cell-type classes of the classification head; ``0`` = no head. Default: ``0``.
        pool (str): cell embedding: the ``"cls"`` token state or the ``"mean"`` over gene tokens. Default: ``"cls"``.
        mvc (bool): add scGPT's cell-level objective (GEPC / "MVC"): predict each masked gene's bin from the cell
            embedding and the gene's identity alone, which makes the cell embedding encode the cell's state (the
            token-level loss alone trains token states to predict *per-cell quantiles*, whose mean is the same for
            every cell). Default: `True`.
        dropout (float): dropout in blocks. Default: ``0.0``.
        backend (str): attention backend (``"auto"``, ``"triton"``, ``"reference"``). Default: ``"auto"``.
        contrastive (float): weight of a cell-level contrastive loss in training (SimCLR's InfoNCE): the cell
            embeddings of two views of each cell, the masked input and a random ``contrastive_keep`` share of its
            genes with their true values, are pulled together through a 2-layer projection head, the other cells of
            the batch being the negatives. A cell type survives losing half of its genes, sequencing depth and gene
            sampling noise do not, so the embedding is asked to keep what is stable. ``0`` = off (no projection head).
            Default: ``0.0``.
        contrastive_keep (float): share of a cell's genes in the second view. Default: ``0.5``.
        contrastive_temperature (float): InfoNCE temperature. Default: ``0.1``.

    Inputs: ``genes`` ``[B, T]`` int64 vocabulary indices (``PAD_ID`` past each cell's length), ``bins`` ``[B, T]``
    int64 in ``[0, n_bins]``, ``seq_lens`` ``[B]`` int number of valid gene tokens (the CLS token is added inside).
    """

    zoo_adaptable = ("head",)

    def __init__(
        self,
        vocab_size: int = 20000,
        n_bins: int = 51,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        activation: str = "sigmoid",
        num_classes: int = 0,
        pool: str = "cls",
        mvc: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
        contrastive: float = 0.0,
        contrastive_keep: float = 0.5,
        contrastive_temperature: float = 0.1,
    ):
        super().__init__()
        if contrastive < 0 or not 0 < contrastive_keep <= 1 or contrastive_temperature <= 0:
            raise ValueError(f"SCFM: need contrastive >= 0, 0 < contrastive_keep <= 1, contrastive_temperature > 0; "
                             f"got {contrastive}, {contrastive_keep}, {contrastive_temperature}.")
        if pool not in POOLS:
            raise ValueError(f"SCFM: pool={pool!r}; use one of {POOLS}.")
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"SCFM: vocab_size={vocab_size} leaves no room for genes after {SPECIAL_TOKENS}.")
        self.vocab_size, self.n_bins, self.dim, self.pool = vocab_size, n_bins, dim, pool
        self.activation, self.num_classes = activation, num_classes
        self.grad_checkpointing = False
        self.gene_embed = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.value_embed = nn.Embedding(n_bins + 1, dim)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, activation, dropout, backend) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.expr_head = nn.Linear(dim, n_bins)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        self.mvc_gene = nn.Linear(dim, dim) if mvc else None
        self.mvc_head = nn.Linear(dim, n_bins) if mvc else None
        self.contrastive, self.contrastive_keep = contrastive, contrastive_keep
        self.contrastive_temperature = contrastive_temperature
        self.contrast_proj = (nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)) if contrastive > 0
                              else None)
        nn.init.normal_(self.gene_embed.weight, std=0.02)
        nn.init.normal_(self.value_embed.weight, std=0.02)

    @property
    def mask_bin(self) -> int:
        """The value-bin index that marks a masked expression value."""
        return self.n_bins

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (timm's name): long cells without storing every block."""
        self.grad_checkpointing = enable

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` each transformer block in place (arguments as :meth:`torch.nn.Module.compile`).

        The blocks, not ``forward``: pretraining runs :meth:`masked_expression_loss` and embedding runs
        :meth:`forward_features`, which never pass through ``__call__``, so compiling ``forward`` alone would leave
        them eager. The blocks hold nearly all of the work (the layer norms, GELU and residual adds fuse around the
        attention kernel's custom op); parameter names do not change.
        """
        for blk in self.blocks:
            blk.compile(*args, **kwargs)

    def forward_tokens(self, genes: torch.Tensor, bins: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """Token states ``[B, T + 1, C]`` (position 0 is CLS); rows past ``seq_lens + 1`` are padding."""
        if genes.shape != bins.shape or genes.ndim != 2:
            raise ValueError(f"SCFM: genes {list(genes.shape)} and bins {list(bins.shape)} must both be [B, T].")
        b = genes.shape[0]
        x = self.gene_embed(genes) + self.value_embed(bins)
        cls = self.gene_embed.weight[CLS_ID].expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1)
        lens = (seq_lens.to(torch.int32) + 1).to(x.device)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, lens, use_reentrant=False)
            else:
                x = blk(x, lens)
        return self.norm(x)

    def pool_tokens(self, tokens: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """Cell embeddings ``[B, C]`` from token states ``[B, T + 1, C]``."""
        if self.pool == "cls":
            return tokens[:, 0]
        valid = torch.arange(tokens.shape[1] - 1, device=tokens.device)[None, :] < seq_lens.to(tokens.device)[:, None]
        w = valid.to(tokens.dtype).unsqueeze(-1)
        return (tokens[:, 1:] * w).sum(1) / w.sum(1).clamp_min(1.0)

    def forward_features(self, genes: torch.Tensor, bins: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """Cell embeddings ``[B, C]`` (float, not normalised)."""
        return self.pool_tokens(self.forward_tokens(genes, bins, seq_lens), seq_lens)

    def expression_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-gene bin logits ``[B, T, n_bins]`` for the gene tokens of ``tokens`` ``[B, T + 1, C]``."""
        return self.expr_head(tokens[:, 1:])

    def forward(self, genes: torch.Tensor, bins: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """Cell-type logits ``[B, num_classes]``, or the cell embeddings ``[B, C]`` when ``num_classes == 0``."""
        return self.head(self.forward_features(genes, bins, seq_lens))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the cell-type head (timm's name); ``0`` removes it."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.dim, num_classes) if num_classes else nn.Identity()
        if hasattr(self, "zoo_config"):
            self.zoo_config.setdefault("model_args", {})["num_classes"] = num_classes

    def cell_expression_logits(self, cell: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """MVC logits ``[B, T, n_bins]``: each gene's bin from the cell embedding ``[B, C]`` and its identity only."""
        q = self.mvc_gene(self.gene_embed(genes))
        return self.mvc_head(F.gelu(q * cell[:, None, :]))

    def gene_subset_view(self, genes: torch.Tensor, bins: torch.Tensor, seq_lens: torch.Tensor,
                         keep: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random ``keep`` share (at least one) of each cell's gene tokens, packed left: ``(genes, bins, seq_lens)``
        with ``genes``/``bins`` ``[B, T']`` (padding ``PAD_ID`` / 0) and ``seq_lens`` ``[B]`` int32."""
        b, t = genes.shape
        lens = seq_lens.to(genes.device).long()
        valid = torch.arange(t, device=genes.device)[None, :] < lens[:, None]
        # valid positions first, in random order; then the first n of each row
        order = torch.rand(b, t, device=genes.device).masked_fill(~valid, 2.0).argsort(1)
        n = torch.minimum((lens.float() * keep).round().long().clamp_min(1), lens)
        width = max(int(n.max()), 1) if b else 1
        idx = order[:, :width]
        kept = torch.arange(width, device=genes.device)[None, :] < n[:, None]
        return (genes.gather(1, idx).masked_fill(~kept, PAD_ID), bins.gather(1, idx).masked_fill(~kept, 0),
                n.to(torch.int32))

    def contrastive_loss(self, cell: torch.Tensor, genes, bins, seq_lens) -> torch.Tensor:
        """InfoNCE between ``cell`` ``[B, C]`` (the embeddings of the masked input) and the embeddings of a random
        gene subset of each cell (``bins`` unmasked), both through ``contrast_proj`` and L2-normalised; symmetric."""
        g, v, n = self.gene_subset_view(genes, bins, seq_lens, self.contrastive_keep)
        other = self.forward_features(g, v, n)
        za = F.normalize(self.contrast_proj(cell).float(), dim=-1)
        zb = F.normalize(self.contrast_proj(other).float(), dim=-1)
        sim = za @ zb.T / self.contrastive_temperature
        target = torch.arange(len(sim), device=sim.device)
        return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))

    def masked_expression_loss(self, genes, bins, seq_lens, targets, parts: bool = False, neg_genes=None):
        """Masked-expression cross-entropy (nats); ``targets`` ``[B, T]`` holds the true bin, ``-100`` elsewhere.

        The token loss predicts each masked bin from the token state. With ``mvc`` the cell loss predicts, from the
        cell embedding and the gene's identity alone, the bin of each masked gene and, for ``neg_genes`` ``[B, Q]``
        (genes the cell does not express, ``0`` = padding), bin 0 = "not expressed". Without those negatives every
        query gene is expressed and per-cell quantile bins look alike in every cell, so the cell embedding need not
        say *which* genes are on, which is what cell types differ in. With ``contrastive`` > 0, in training mode,
        ``contrastive`` times :meth:`contrastive_loss` is added (random views: never part of an evaluation loss).
        Returns the sum of the losses, or ``{"token": ..., "cell": ..., "contrast": ...}`` (unweighted) when ``parts``.
        """
        tokens = self.forward_tokens(genes, bins, seq_lens)
        flat = targets.reshape(-1)
        out = {"token": F.cross_entropy(self.expression_logits(tokens).float().reshape(-1, self.n_bins), flat,
                                        ignore_index=-100)}
        if self.mvc_head is not None:
            cell = self.pool_tokens(tokens, seq_lens)
            logits = self.cell_expression_logits(cell, genes).float().reshape(-1, self.n_bins)
            if neg_genes is not None and neg_genes.numel():
                neg = self.cell_expression_logits(cell, neg_genes).float().reshape(-1, self.n_bins)
                logits = torch.cat([logits, neg])
                flat = torch.cat([flat, torch.where(neg_genes.reshape(-1) > 0, 0, -100)])
            out["cell"] = F.cross_entropy(logits, flat, ignore_index=-100)
        weights = {}
        if self.contrast_proj is not None and self.training and len(genes) > 1:
            true_bins = torch.where(targets >= 0, targets, bins)
            out["contrast"] = self.contrastive_loss(self.pool_tokens(tokens, seq_lens), genes, true_bins, seq_lens)
            weights["contrast"] = self.contrastive
        return out if parts else sum(weights.get(k, 1.0) * v for k, v in out.items())


_SIZES = {
    "tiny": dict(dim=64, depth=2, num_heads=4),
    "small": dict(dim=128, depth=4, num_heads=4),
    "base": dict(dim=512, depth=12, num_heads=8),
    "large": dict(dim=768, depth=16, num_heads=12),
}


def _make(activation: str, size: str, **kwargs) -> SCFM:
    return SCFM(**{**_SIZES[size], "activation": activation, **kwargs})


_INFO = dict(family="scfm", task="masked_expression", paper=PAPER, license="Apache-2.0")


@register_model(**_INFO)
def scfm_sigmoid_tiny(**kwargs) -> SCFM:
    """Single-cell encoder, sigmoid attention (bias -log n), 64-d, 2 blocks (tests and quick runs)."""
    return _make("sigmoid", "tiny", **kwargs)


@register_model(**_INFO)
def scfm_softmax_tiny(**kwargs) -> SCFM:
    """Single-cell encoder, softmax attention, 64-d, 2 blocks: the sigmoid twin's control."""
    return _make("softmax", "tiny", **kwargs)


@register_model(**_INFO)
def scfm_sigmoid_small(**kwargs) -> SCFM:
    """Single-cell encoder, sigmoid attention (bias -log n), 128-d, 4 blocks, 4 heads (a few M parameters)."""
    return _make("sigmoid", "small", **kwargs)


@register_model(**_INFO)
def scfm_softmax_small(**kwargs) -> SCFM:
    """Single-cell encoder, softmax attention, 128-d, 4 blocks, 4 heads: the sigmoid twin's control."""
    return _make("softmax", "small", **kwargs)


@register_model(**_INFO)
def scfm_sigmoid_base(**kwargs) -> SCFM:
    """Single-cell encoder, sigmoid attention (bias -log n), 512-d, 12 blocks, 8 heads."""
    return _make("sigmoid", "base", **kwargs)


@register_model(**_INFO)
def scfm_softmax_base(**kwargs) -> SCFM:
    """Single-cell encoder, softmax attention, 512-d, 12 blocks, 8 heads."""
    return _make("softmax", "base", **kwargs)


@register_model(**_INFO)
def scfm_sigmoid_large(**kwargs) -> SCFM:
    """Single-cell encoder, sigmoid attention (bias -log n), 768-d, 16 blocks, 12 heads (>= 100M parameters)."""
    return _make("sigmoid", "large", **kwargs)


@register_model(**_INFO)
def scfm_softmax_large(**kwargs) -> SCFM:
    """Single-cell encoder, softmax attention, 768-d, 16 blocks, 12 heads (>= 100M parameters)."""
    return _make("softmax", "large", **kwargs)
