"""Gateformer (Lan & Oermann, arXiv 2505.00307): gated temporal and variate-wise attention for multivariate forecasting.

Each variate of the look-back window becomes one token built from two views of its history, a global linear
embedding of the whole window and a patch Transformer over its local shape, mixed by a learned gate. Attention
across the variate tokens then models cross-series dependencies, and a second gate decides per feature how much
of that cross-variate context to keep. The maths and every choice the paper leaves open are in
``docs/models/gateformer.md``.

Shapes: input ``x`` ``[B, L, N]`` (``L`` = ``seq_len`` look-back steps, ``N`` = ``n_vars`` variates, float32),
output ``[B, H, N]`` (``H`` = ``pred_len``) on the input's scale. With ``cycle_len > 0`` the model also reads
``step`` ``[B]`` (int64), the time index of each window's first look-back step (see :class:`RecurrentCycle`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gatedzoo.layers import GatedFusion, MultiheadAttention
from gatedzoo.zoo import ZooMixin, register_model

PAPER = "Lan & Oermann, Gateformer: Advancing Multivariate Time Series Forecasting through Temporal and Variate-Wise " \
        "Attention with Gated Representations, arXiv 2505.00307 (FMSD workshop @ ICML 2025)"


class InstanceNorm(nn.Module):
    """Per-sample, per-variate normalisation over time (RevIN without the affine part), undone on the forecast.

    The series is shifted by its centre and divided by its standard deviation over the look-back. The centre is
    the look-back mean (RevIN, the paper's code) or, with ``center="last"``, the last observed value (the
    subtraction of NLinear, Zeng et al. 2023): a model that outputs zeros then repeats the last value, the strong
    baseline of random-walk-like series such as exchange rates. The centre is detached (it only shifts the
    series); the standard deviation keeps its gradient, as in the paper's code. ``eps`` is added to the (biased)
    variance.

    Args:
        eps (float): variance floor. Default: ``1e-5``.
        center (str): ``"mean"`` (paper) or ``"last"``. Default: ``"mean"``.
    """

    CENTERS = ("mean", "last")

    def __init__(self, eps: float = 1e-5, center: str = "mean"):
        super().__init__()
        if center not in self.CENTERS:
            raise ValueError(f"Gateformer: center={center!r} must be one of {self.CENTERS}.")
        self.eps, self.center = eps, center

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``[B, L, N]`` -> ``(normalised x, centre [B, 1, N], std [B, 1, N])``."""
        mean = x.mean(1, keepdim=True).detach()
        std = torch.sqrt((x - mean).var(1, keepdim=True, unbiased=False) + self.eps)
        shift = mean if self.center == "mean" else x[:, -1:].detach()
        return (x - shift) / std, shift, std


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine position table ``[length, dim]`` (Vaswani et al.); odd ``dim`` drops the last cosine."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class RecurrentCycle(nn.Module):
    """A learned periodic profile ``Q`` ``[cycle_len, n_vars]`` read at a window's phase (CycleNet's residual cycle).

    Lin et al., CycleNet (NeurIPS 2024), model a fixed-period pattern, the daily shape of hourly load for example,
    with one learnable value per phase and variate, shared by every window: the model subtracts the profile from
    the (instance-normalised) look-back, forecasts the residual, and adds the profile back over the horizon. Phase
    ``p`` of time step ``t`` is ``t mod cycle_len``, so ``t`` must count steps of the data's frequency from one
    fixed origin in training and inference alike; :func:`gatedzoo.data.timeseries.time_steps` counts them from
    1970-01-01 00:00. Initialised at zero, so an untrained profile changes nothing.

    Args:
        cycle_len (int): the period in steps (24 for a daily cycle of hourly data, 48 for half-hourly, 7 for a
            weekly cycle of daily data).
        n_vars (int): variates ``N``.
    """

    def __init__(self, cycle_len: int, n_vars: int):
        super().__init__()
        self.cycle_len = cycle_len
        self.profile = nn.Parameter(torch.zeros(cycle_len, n_vars))

    def forward(self, step: torch.Tensor, length: int) -> torch.Tensor:
        """``step`` ``[B]`` (first time step of each span), ``length`` -> the profile over the spans,
        ``[B, length, N]``."""
        t = step.to(self.profile.device).long().view(-1, 1) + torch.arange(length, device=self.profile.device)
        return self.profile[t.remainder(self.cycle_len)]


class PatchEmbedding(nn.Module):
    """Right replication padding by ``stride``, non-overlapping patches, a bias-free linear map, sinusoidal positions.

    ``x`` ``[B*N, L]`` -> ``[B*N, P, d]`` with ``P = (L - patch_len) // stride + 2`` patches (13 for L = 96, 8/8).
    """

    def __init__(self, seq_len: int, dim: int, patch_len: int, stride: int, dropout: float):
        super().__init__()
        self.patch_len, self.stride = patch_len, stride
        self.num_patches = (seq_len - patch_len) // stride + 2
        self.proj = nn.Linear(patch_len, dim, bias=False)
        self.register_buffer("pos", sinusoidal_table(self.num_patches, dim), persistent=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # replicate the last value so the final patch sees the most recent steps even when L is not a stride multiple
        x = F.pad(x.unsqueeze(1), (0, self.stride), mode="replicate").squeeze(1)
        patches = x.unfold(-1, self.patch_len, self.stride)
        return self.drop(self.proj(patches) + self.pos)


class EncoderLayer(nn.Module):
    """Pre-norm Transformer layer: ``x + drop(attn(LN x))``, then ``x + drop(W2 drop(relu(W1 LN x)))``.

    Attention runs through :class:`gatedzoo.layers.MultiheadAttention` (the shared core).

    Args:
        dim (int): token width ``d``.
        num_heads (int): attention heads; must divide ``dim``.
        ffn_dim (int): hidden width of the feed-forward block.
        dropout (float): dropout after attention, inside and after the feed-forward block.
        activation (str): ``"softmax"`` or ``"sigmoid"`` attention. Default: ``"softmax"``.
        gate (str, Optional): G1 output gate (``"headwise"`` / ``"elementwise"``). Default: `None`.
        backend (str): attention backend for :func:`gatedzoo.kernels.attention`. Default: ``"auto"``.
        attn_drop (float): dropout on the attention probabilities (``nn.TransformerEncoderLayer`` drops them with
            the layer's dropout). Default: ``0.0``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, activation: str = "softmax",
                 gate: str | None = None, backend: str = "auto", attn_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, num_heads, activation=activation, gate=gate, backend=backend,
                                       attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[batch, tokens, dim]`` -> same shape."""
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.fc2(self.drop(F.relu(self.fc1(self.norm2(x))))))


class Gateformer(ZooMixin, nn.Module):
    """Gateformer forecaster: ``[B, seq_len, n_vars]`` look-back -> ``[B, pred_len, n_vars]`` forecast.

    Args:
        seq_len (int): look-back length ``L``. Default: ``96``.
        pred_len (int): horizon ``H``. Default: ``96``.
        n_vars (int): number of variates ``N`` (TSLib ``enc_in``); no weight depends on it, it guards the input.
            Default: ``7``.
        d_model (int): token width ``d``. Default: ``64``.
        d_ff (int): feed-forward width. Default: ``64``.
        n_heads (int): attention heads in both encoders. Default: ``4``.
        e_layers (int): layers of the temporal and of the variate encoder (each). Default: ``1``.
        dropout (float): dropout everywhere (embeddings, encoders, flatten head). Default: ``0.1``.
        patch_len (int): patch length ``P``. Default: ``8``.
        stride (int): patch stride ``S`` (also the replication padding). Default: ``8``.
        variate_activation (str): ``"softmax"`` (paper) or ``"sigmoid"`` attention across variates.
            Default: ``"softmax"``.
        variate_gate (str, Optional): G1 output gate on the variate attention, ``"headwise"`` or ``"elementwise"``.
            Default: `None` (paper).
        backend (str): attention backend of every layer (``"auto"``, ``"reference"``, ``"triton"``, ``"sdpa"``).
            Default: ``"auto"``.
        attn_dropout (float, Optional): dropout on the attention probabilities of both encoders while training;
            `None` means the same as ``dropout``, as the paper's ``nn.TransformerEncoderLayer``. Default: ``0.0``
            (measured better: three seeds of both settings in ``docs/models/gateformer.md``; the shipped weights
            were trained with 0).
        cycle_len (int): period of a learned residual cycle (:class:`RecurrentCycle`, from CycleNet), in steps;
            ``0`` turns it off (the paper's model). With a cycle, ``forward`` needs each window's time ``step``, which
            the data layer supplies for data with a regular frequency. Default: ``0``.
        center (str): what the instance normalisation subtracts (:class:`InstanceNorm`): ``"mean"`` of the
            look-back (paper) or its ``"last"`` value (NLinear's; the forecast is then a learned change from the
            last observation). Default: ``"mean"``.

    ``forward`` returns the forecast; :meth:`gates` returns the two fusion gates for inspection.
    """

    # a new horizon re-initialises the head, a new variate count the cycle profile (one column per variate)
    zoo_adaptable = ("head", "cycle")

    def __init__(
        self,
        seq_len: int = 96,
        pred_len: int = 96,
        n_vars: int = 7,
        d_model: int = 64,
        d_ff: int = 64,
        n_heads: int = 4,
        e_layers: int = 1,
        dropout: float = 0.1,
        patch_len: int = 8,
        stride: int = 8,
        variate_activation: str = "softmax",
        variate_gate: str | None = None,
        backend: str = "auto",
        attn_dropout: float | None = 0.0,
        cycle_len: int = 0,
        center: str = "mean",
    ):
        super().__init__()
        if not isinstance(cycle_len, int) or cycle_len < 0:
            raise ValueError(f"Gateformer: cycle_len={cycle_len!r} must be 0 (off) or a period in steps (e.g. 24).")
        for name, value in (("seq_len", seq_len), ("pred_len", pred_len), ("n_vars", n_vars), ("d_model", d_model),
                            ("d_ff", d_ff), ("n_heads", n_heads), ("e_layers", e_layers), ("patch_len", patch_len),
                            ("stride", stride)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Gateformer: {name}={value!r} must be a positive integer.")
        if patch_len > seq_len:
            raise ValueError(f"Gateformer: patch_len={patch_len} is longer than seq_len={seq_len}; shorten the patch.")
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        for name, value in (("dropout", dropout), ("attn_dropout", attn_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Gateformer: {name}={value} must lie in [0, 1).")
        self.seq_len, self.pred_len, self.n_vars = seq_len, pred_len, n_vars
        # the window the weights take and give, whatever a loaded config said (a pred_len override changes it)
        self.zoo_config = {"lookback": seq_len, "horizon": pred_len}
        self.norm = InstanceNorm(center=center)
        self.global_embed = nn.Linear(seq_len, d_model)
        self.patch_embed = PatchEmbedding(seq_len, d_model, patch_len, stride, dropout)
        self.temporal = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout, backend=backend, attn_drop=attn_dropout)
            for _ in range(e_layers)
        )
        self.flatten_proj = nn.Linear(d_model * self.patch_embed.num_patches, d_model)
        self.temporal_gate = GatedFusion(d_model)
        self.variate = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout, variate_activation, variate_gate, backend, attn_dropout)
            for _ in range(e_layers)
        )
        self.variate_gate = GatedFusion(d_model)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, pred_len)
        self.cycle_len = cycle_len
        self.cycle = RecurrentCycle(cycle_len, n_vars) if cycle_len else None

    @property
    def reads_time(self) -> bool:
        """Whether ``forward`` needs the windows' time steps (a residual cycle is on)."""
        return self.cycle is not None

    def _check(self, x: torch.Tensor, step: torch.Tensor | None = None) -> None:
        if x.ndim != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.n_vars:
            raise ValueError(
                f"Gateformer expects x of shape [batch, seq_len={self.seq_len}, n_vars={self.n_vars}], got "
                f"{list(x.shape)}. Feed windows of the look-back the model was built with, with one column per "
                "variate (build the model with n_vars= and seq_len= matching your data)."
            )
        if not x.is_floating_point():
            raise TypeError(f"Gateformer expects a floating-point input, got {x.dtype}; convert with x.float().")
        if self.cycle is None:
            return
        if step is None:
            raise ValueError(
                f"this Gateformer has a residual cycle (cycle_len={self.cycle_len}) and needs each window's time step: "
                "call model(x, step) with step [batch] = the first look-back step's index "
                "(gatedzoo.data.timeseries.time_steps of its timestamp); the data modules and Forecaster pass it."
            )
        if step.shape != (x.shape[0],) or step.is_floating_point():
            raise ValueError(f"step must be an integer tensor of shape [batch={x.shape[0]}], got "
                             f"{step.dtype} {list(step.shape)}.")

    def _normalise(self, x: torch.Tensor, step: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Checked input -> ``(z, mean, std)``: instance-normalised, minus the residual cycle when there is one."""
        self._check(x, step)
        z, mean, std = self.norm(x)
        if self.cycle is not None:
            # CycleNet's order: the cycle is removed after instance normalisation and added back before undoing it
            z = z - self.cycle(step, self.seq_len)
        return z, mean, std

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``x`` ``[B, L, N]`` -> global ``g`` and temporal-dependency ``t`` embeddings, ``[B, N, d]``."""
        b, _, n = x.shape
        series = x.transpose(1, 2)  # [B, N, L]
        g = self.drop(self.global_embed(series))
        t = self.patch_embed(series.reshape(b * n, self.seq_len))
        for layer in self.temporal:
            t = layer(t)
        t = self.drop(self.flatten_proj(t.flatten(1)))
        return g, t.view(b, n, -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Variate tokens after both gates, ``[B, N, d]``, from a normalised look-back ``[B, L, N]``."""
        g, t = self._embed(x)
        e = self.temporal_gate(g, t)
        c = e
        for layer in self.variate:
            c = layer(c)
        return self.variate_gate(e, c)

    def forward(self, x: torch.Tensor, step: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, seq_len, n_vars]`` -> forecast ``[B, pred_len, n_vars]``, de-normalised to the input scale.

        ``step`` ``[B]`` int64: time index of each window's first look-back step; read only with ``cycle_len > 0``.
        """
        z, mean, std = self._normalise(x, step)
        out = self.head(self.encode(z)).transpose(1, 2)
        if self.cycle is not None:
            out = out + self.cycle(step + self.seq_len, self.pred_len)
        return out * std + mean

    @torch.no_grad()
    def gates(self, x: torch.Tensor, step: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The gate values ``[B, N, d]`` of gate 1 (weight on the global embedding) and gate 2 (weight kept on the
        pre-attention tokens), for inspection."""
        z, _, _ = self._normalise(x, step)
        g, t = self._embed(z)
        e = self.temporal_gate(g, t)
        c = e
        for layer in self.variate:
            c = layer(c)
        return {"temporal": self.temporal_gate.gate(g, t), "variate": self.variate_gate.gate(e, c)}


@register_model(family="gateformer", task="forecasting", paper=PAPER, license="Apache-2.0")
def gateformer(**kwargs) -> Gateformer:
    """Gateformer multivariate forecaster (look-back 96 -> horizon 96 by default; see :class:`Gateformer`)."""
    # dotted CLI overrides of the untyped model_args dict (--model.init_args.model_args.n_vars 3) arrive as text
    for key, value in kwargs.items():
        if isinstance(value, str) and key not in ("variate_activation", "variate_gate", "backend", "center"):
            try:
                kwargs[key] = float(value) if key == "dropout" else int(value)
            except ValueError:
                raise ValueError(f"gateformer: {key}={value!r} is not a number.") from None
    return Gateformer(**kwargs)
