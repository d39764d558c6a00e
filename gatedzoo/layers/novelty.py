"""A k-nearest-normal novelty guard for tabular classifiers: "attack if the classifier says so, or if the input is
unlike every normal training row".

Used by TCH-Net (``TCHNet.attach_novelty``) for attack types that the training data never showed: on NSL-KDD the
classifier alone calls most of KDDTest+'s unseen types normal, the guard catches them (model card, "Unseen attack
types"). The maths:

- point of a row: its scaled numeric features ``[F]`` and one unit per categorical value (one-hot), so a different
  category counts like one scaled unit apart in each of the two coordinates it touches;
- score ``s`` = mean Euclidean distance to the ``k`` nearest reference points (normal training rows);
- threshold ``t`` = the ``1 - r`` quantile of ``s`` on normal calibration rows (validation normals), where ``r`` is
  the false-alarm rate allowed on normal traffic;
- rule: the classifier's arg-max, except that a row the classifier calls normal (class 0) with ``s > t`` becomes
  its most probable attack class (for two classes: "attack if p(attack) > 0.5 or s > t");
- probabilities (for ranking metrics): attack mass ``max(1 - p0, g)`` with ``g = s / (s + t)``, above 0.5 exactly
  when ``s > t``; the attack classes keep their proportions, except that a row the rule turns into an attack puts
  the whole attack mass on its chosen class.

Distances are computed in float64 whatever the device: TF32 matrix products (allowed by many training scripts on
GPUs) moved the NSL-KDD threshold from 0.4918 to 0.4969, and float64 makes CPU and GPU agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def onehot_points(x_num: torch.Tensor, x_cat: torch.Tensor | None, cards: list[int],
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rows ``x_num [N, F]`` + category codes ``x_cat [N, K]`` -> points ``[N, F + sum(cards)]`` in ``dtype``: the
    numbers and one unit per categorical value."""
    onehot = [F.one_hot(x_cat[:, i].long(), c).to(dtype) for i, c in enumerate(cards)]
    return torch.cat([x_num.to(dtype), *onehot], 1)


@torch.no_grad()
def knn_distance(ref: torch.Tensor, query: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Mean Euclidean distance ``[N]`` from each row of ``query [N, D]`` to its ``k`` nearest rows of ``ref [M, D]``
    (in their dtype, ``chunk`` query rows at a time)."""
    out = [torch.cdist(query[i:i + chunk], ref).topk(k, largest=False).values.mean(1)
           for i in range(0, len(query), chunk)]
    return torch.cat(out) if out else query.new_zeros(0)


def novelty_rule(prob: torch.Tensor, score: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """Class ``[N]`` (int64) of each row under the rule: the arg-max of ``prob [N, C]`` (class 0 = normal), except
    that a row called normal whose ``score [N]`` exceeds ``threshold`` gets its most probable attack class.
    ``score`` `None`: the arg-max."""
    pred = prob.argmax(1)
    if score is None:
        return pred
    flag = (pred == 0) & (score > threshold)
    return torch.where(flag, 1 + prob[:, 1:].argmax(1), pred)


def combine_novelty(prob: torch.Tensor, score: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """Class probabilities ``[N, C]`` (float64) whose arg-max is :func:`novelty_rule` and whose attack mass
    ``1 - p0`` is ``max(1 - p0, s / (s + threshold))`` (``s`` clipped at 0); see the module docstring.
    ``score`` `None`: ``prob`` unchanged (as float64)."""
    p = prob.double()
    if score is None:
        return p.clone()
    s = score.double().clamp_min(0.0)
    att = 1.0 - p[:, 0]
    new = torch.maximum(att, s / (s + threshold))
    uniform = torch.full_like(p[:, 1:], 1.0 / (p.shape[1] - 1))
    share = torch.where(att[:, None] > 0, p[:, 1:] / att[:, None].clamp_min(1e-300), uniform)
    out = torch.cat([(1.0 - new)[:, None], new[:, None] * share], 1)
    pred = novelty_rule(p, s, threshold)
    flag = pred != p.argmax(1)
    if flag.any():
        rows = out[flag]
        rows[:, 1:] = 0.0
        rows[torch.arange(len(rows)), pred[flag]] = new[flag]
        out[flag] = rows
    return out


class KNNNoveltyGuard(nn.Module):
    """The k-nearest-normal score and its threshold, stored as buffers (they travel in ``model.safetensors``).

    Args:
        num_features (int): numeric features per row ``F`` (already scaled by the model's preprocessing).
        cat_cardinalities (list[int]): sizes of the categorical vocabularies ``K`` (unknown bucket included).
            Default: none.
        ref_rows (int): reference rows ``M`` (normal training rows). Default: ``1`` (a placeholder to load into).
        k (int): neighbours averaged. Default: ``5``.
        false_alarm_rate (float): the ``r`` the threshold was set at (recorded; :meth:`fit` uses it). Default: ``0.1``.

    Buffers: ``ref_num [M, F]`` float16 (scaled features are clipped to a few units, where float16 keeps ~3 digits),
    ``ref_cat [M, K]`` int32, ``threshold []`` float64. ``enabled`` (bool, default `True`) switches the rule off
    without dropping it (``forward`` then returns its input).
    """

    def __init__(self, num_features: int, cat_cardinalities: list[int] | None = None, ref_rows: int = 1,
                 k: int = 5, false_alarm_rate: float = 0.1):
        super().__init__()
        cards = [int(c) for c in (cat_cardinalities or [])]
        if k < 1 or ref_rows < k:
            raise ValueError(f"KNNNoveltyGuard: need 1 <= k <= ref_rows, got k={k}, ref_rows={ref_rows}.")
        if not 0.0 < false_alarm_rate < 1.0:
            raise ValueError(f"KNNNoveltyGuard: false_alarm_rate must be in (0, 1), got {false_alarm_rate}.")
        self.num_features, self.cards, self.k, self.false_alarm_rate = num_features, cards, k, false_alarm_rate
        self.register_buffer("ref_num", torch.zeros(ref_rows, num_features, dtype=torch.float16))
        self.register_buffer("ref_cat", torch.zeros(ref_rows, len(cards), dtype=torch.int32))
        self.register_buffer("threshold", torch.tensor(math.inf, dtype=torch.float64))
        self.enabled = True

    def config(self) -> dict:
        """The constructor arguments that rebuild this guard's shapes (what ``model_args['novelty']`` stores)."""
        return {"k": self.k, "ref_rows": len(self.ref_num), "false_alarm_rate": self.false_alarm_rate}

    def points(self, x_num: torch.Tensor, x_cat: torch.Tensor | None) -> torch.Tensor:
        """Rows ``x_num [N, F]`` + categories ``x_cat [N, K]`` -> points ``[N, F + sum(cards)]`` (float64)."""
        if x_num.ndim != 2 or x_num.shape[1] != self.num_features:
            raise ValueError(f"KNNNoveltyGuard expects x_num [N, {self.num_features}], got {list(x_num.shape)}.")
        if self.cards and (x_cat is None or x_cat.ndim != 2 or x_cat.shape[1] != len(self.cards)):
            got = None if x_cat is None else list(x_cat.shape)
            raise ValueError(f"KNNNoveltyGuard expects x_cat [N, {len(self.cards)}], got {got}.")
        return onehot_points(x_num, x_cat, self.cards)

    def _ref_points(self) -> torch.Tensor:
        """The reference points, built once per state of the buffers (``score`` runs once per batch): the key
        changes when the buffers are written in place (``fit``, ``load_state_dict``) or moved (``.to``)."""
        key = (self.ref_num._version, self.ref_cat._version, self.ref_num.data_ptr(), self.ref_cat.data_ptr())
        if getattr(self, "_ref_cache", (None,))[0] != key:
            self._ref_cache = (key, self.points(self.ref_num, self.ref_cat))
        return self._ref_cache[1]

    @torch.no_grad()
    def score(self, x_num: torch.Tensor, x_cat: torch.Tensor | None = None, chunk: int = 2048) -> torch.Tensor:
        """Novelty ``[N]`` (float64): mean distance to the ``k`` nearest reference points."""
        ref = self._ref_points()
        return knn_distance(ref, self.points(x_num, x_cat).to(ref.device), self.k, chunk)

    @classmethod
    @torch.no_grad()
    def fit(cls, normal_num: torch.Tensor, normal_cat: torch.Tensor | None, calib_num: torch.Tensor,
            calib_cat: torch.Tensor | None, cat_cardinalities: list[int] | None = None, k: int = 5,
            false_alarm_rate: float = 0.1) -> KNNNoveltyGuard:
        """A guard whose reference is ``normal_* [M, ...]`` (normal training rows) and whose threshold is the
        ``1 - false_alarm_rate`` quantile of the score on ``calib_* [N, ...]`` (normal rows *not* in the reference,
        e.g. the validation normals: a reference row's own distance would be 0)."""
        if len(calib_num) == 0:
            raise ValueError("KNNNoveltyGuard.fit: no normal calibration rows; the threshold needs normal rows that "
                             "are not in the reference (e.g. the validation split's normal flows).")
        guard = cls(normal_num.shape[1], cat_cardinalities, len(normal_num), k, false_alarm_rate)
        guard.ref_num.copy_(normal_num.to(torch.float16))
        if guard.cards:
            guard.ref_cat.copy_(normal_cat.to(torch.int32))
        s = guard.score(calib_num, calib_cat)
        guard.threshold.fill_(float(torch.quantile(s, 1.0 - false_alarm_rate)))
        return guard

    def forward(self, logits: torch.Tensor, x_num: torch.Tensor, x_cat: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, C]`` -> log of :func:`combine_novelty`'s probabilities (same dtype), or ``logits`` when
        disabled. Not differentiable through the rule: use it for inference, not training."""
        if not self.enabled:
            return logits
        prob = torch.softmax(logits.double(), -1)
        out = combine_novelty(prob, self.score(x_num, x_cat).to(prob.device), float(self.threshold))
        return out.clamp_min(1e-30).log().to(logits.dtype)


__all__ = ["KNNNoveltyGuard", "combine_novelty", "knn_distance", "novelty_rule", "onehot_points"]
