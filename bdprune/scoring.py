"""Per-layer thresholds and z-scores, and the types every report and the pruner read: the scan
result, its checkpoint-level verdict, and the row of a checkpoint that could not be scanned."""

from __future__ import annotations

import math
import copy
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

SCHEMA_VERSION = 1


@dataclass
class LayerResult:
    """One BN layer: raw scores, z-scores (sign flipped where low is suspicious), flagged channels."""

    name: str
    scores: list[float]
    z: list[float]
    flagged: list[int]
    mean: float
    std: float
    threshold: float | None


def flag_layer(name: str, scores: Tensor, u: float, *, low_is_suspicious: bool) -> LayerResult:
    """Flag the channels beyond the layer's own mean by more than ``u`` (unbiased) standard deviations.

    ``score > mean + u*std`` (``score < mean - u*std`` when low is suspicious), exactly as the
    official code writes it. A layer with one channel, or whose scores are all equal, has no
    spread: every z is 0 and nothing is flagged.
    """
    s = scores.detach().to("cpu", torch.float64)
    mean = float(s.mean())
    std = float(s.std()) if s.numel() > 1 else math.nan
    if not math.isfinite(std) or std == 0.0:
        return LayerResult(name, s.tolist(), [0.0] * s.numel(), [], mean, 0.0 if s.numel() > 1 else math.nan, None)
    sign = -1.0 if low_is_suspicious else 1.0
    threshold = mean + sign * u * std
    flagged = (s < threshold) if low_is_suspicious else (s > threshold)
    z = sign * (s - mean) / std
    return LayerResult(name, s.tolist(), z.tolist(), flagged.nonzero().flatten().tolist(), mean, std, threshold)


def flag_network(raw: dict[str, Tensor], u: float) -> list[LayerResult]:
    """Flag channels whose score is more than ``u`` standard deviations above the mean of *all*
    scored channels of the network (one ranking; z is global, comparable across layers)."""
    every = torch.cat([s.detach().to("cpu", torch.float64).flatten() for s in raw.values()])
    mean = float(every.mean())
    std = float(every.std()) if every.numel() > 1 else math.nan
    spread = math.isfinite(std) and std > 0.0
    threshold = mean + u * std if spread else None
    layers = []
    for name, scores in raw.items():
        s = scores.detach().to("cpu", torch.float64)
        z = (s - mean) / std if spread else torch.zeros_like(s)
        flagged = (s > threshold).nonzero().flatten().tolist() if spread else []
        layers.append(LayerResult(name, s.tolist(), z.tolist(), flagged, mean, std if spread else 0.0, threshold))
    return layers


def flag_absolute(raw: dict[str, Tensor], u: float, *, low_is_suspicious: bool) -> list[LayerResult]:
    """Flag channels whose raw score is at most ``u`` (at least ``u`` when high is suspicious), as
    the learned-mask methods prune ``mask <= threshold``. z is the margin past the bound,
    ``u - score`` (``score - u``), so the ranking is one over the whole network and a channel is
    flagged exactly when its z is >= 0."""
    layers = []
    for name, scores in raw.items():
        s = scores.detach().to("cpu", torch.float64)
        z = (u - s) if low_is_suspicious else (s - u)
        std = float(s.std()) if s.numel() > 1 else math.nan
        layers.append(LayerResult(name, s.tolist(), z.tolist(), (z >= 0).nonzero().flatten().tolist(), float(s.mean()), std, u))
    return layers


def flag(raw: dict[str, Tensor], u: float, *, ranking: str, low_is_suspicious: bool) -> list[LayerResult]:
    """Per-layer (``ranking="layer"``, the papers' rule), network-wide, or absolute flags at ``u``."""
    if ranking == "network":
        return flag_network(raw, u)
    if ranking == "absolute":
        return flag_absolute(raw, u, low_is_suspicious=low_is_suspicious)
    return [flag_layer(name, s, u, low_is_suspicious=low_is_suspicious) for name, s in raw.items()]


@dataclass
class Verdict:
    """``suspicious`` when ``statistic`` exceeds ``threshold``; ``drivers`` are the channels behind it.

    ``rule`` names the rule that decided (e.g. ``bnp-trigger``, or ``bnp-kl-ratio`` where the probe
    could not run). ``components`` holds each part of the rule (its value and its own bar);
    ``target`` is the suspected target class and ``targets`` every class a synthesized trigger
    singled out (several for a multi-target backdoor); None / empty where the evidence names none.
    ``trigger`` and ``sample`` (not in the JSON) are the synthesized trigger of the target (C x H x W,
    pixel space) and a clean image it was added to, for pictures."""

    suspicious: bool
    statistic: float
    threshold: float
    rule: str
    drivers: list[dict] = field(default_factory=list)
    components: dict = field(default_factory=dict)
    target: int | None = None
    notes: list[str] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    trigger: Any = field(default=None, repr=False, compare=False)
    sample: Any = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``suspicious`` or ``clean``."""
        return "suspicious" if self.suspicious else "clean"

    def component_text(self) -> str:
        """The parts of the rule, e.g. ``trigger share 0.91 (bar 0.7), kl-ratio 3.1 (bar 12)``."""
        names = {"kl_ratio": "kl-ratio", "trigger": "trigger share", "class_gap": "class gap"}
        return ", ".join(f"{names.get(k, k)} {c['value']:.3g} (bar {c['bar']:g})" for k, c in self.components.items())

    def target_text(self) -> str:
        """``suspected target class 3`` (``classes 3, 7``), or that none is named."""
        if len(self.targets) > 1:
            return "suspected target classes " + ", ".join(map(str, self.targets))
        if self.target is not None:
            return f"suspected target class {self.target}"
        return "target class not determined"

    def detail_text(self) -> str:
        """The statistic against its threshold, the rule's parts and the suspected target, e.g.
        ``bnp-trigger = 1.3 (threshold 1); trigger share 0.91 (bar 0.7), ...; suspected target class 0``."""
        parts = [f"{self.rule} = {self.statistic:.3g} (threshold {self.threshold:g})"]
        if self.components:
            parts.append(self.component_text())
        if self.target is not None:
            parts.append(self.target_text())
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """A JSON-ready dict: every field but the pictures' tensors, with ``label``."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("trigger", "sample")}
        return {"label": self.label, **copy.deepcopy(data)}


@dataclass
class ScanResult:
    """Everything a scan found; the reports and the pruner work from this alone."""

    checkpoint: str
    arch: str
    method: str
    method_reason: str
    u: float
    samples: int
    device: str
    layers: list[LayerResult]
    low_is_suspicious: bool
    pruned_params: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    version: str = ""
    verdict: Verdict | None = None  # the checkpoint's verdict once assessed (bdprune.verdict.assess)
    ranking: str = "layer"  # "network": z and flags over all channels at once (bnp+); "absolute": score vs u (anp, rnp)
    fill: dict[str, list[float]] | None = None  # bias a pruned channel gets, per layer (bnp+)
    data: str | None = None  # where the samples came from (a file, or e.g. "<tensor>" from the Python API); None if unused

    @property
    def channels_total(self) -> int:
        """How many channels were scored."""
        return sum(len(layer.scores) for layer in self.layers)

    def flagged_channels(self) -> dict[str, list[int]]:
        """Flagged channel indices per layer, layers with none left out."""
        return {layer.name: list(layer.flagged) for layer in self.layers if layer.flagged}

    @property
    def flagged_total(self) -> int:
        """How many channels were flagged."""
        return sum(len(layer.flagged) for layer in self.layers)

    def ranked(self) -> list[tuple[str, int, float, float, bool]]:
        """Every channel as (layer, channel, score, z, flagged), most suspicious first."""
        rows = []
        for layer in self.layers:
            flagged = set(layer.flagged)
            rows += [(layer.name, c, s, z, c in flagged) for c, (s, z) in enumerate(zip(layer.scores, layer.z))]
        rows.sort(key=lambda r: (-r[3] if math.isfinite(r[3]) else math.inf, r[0], r[1]))
        return rows

    def rethreshold(self, u: float) -> "ScanResult":
        """The same scores flagged at another ``u`` (no recomputation)."""
        raw = {layer.name: torch.tensor(layer.scores, dtype=torch.float64) for layer in self.layers}
        layers = flag(raw, u, ranking=self.ranking, low_is_suspicious=self.low_is_suspicious)
        return ScanResult(**{**self.__dict__, "u": u, "layers": layers})

    def top(self, k: int) -> dict[str, list[int]]:
        """The ``k`` most suspicious channels of the whole ranking, per layer (ties broken by name, index)."""
        chosen: dict[str, list[int]] = {}
        for layer, channel, *_ in self.ranked()[:k]:
            chosen.setdefault(layer, []).append(channel)
        return {layer: sorted(chans) for layer, chans in chosen.items()}

    def to_dict(self) -> dict:
        """A JSON-ready dict (``schema_version`` included); NaN becomes null."""
        data = asdict(replace(self, verdict=None))  # the verdict's own to_dict leaves its pictures out
        data["pruned_params"] = list(self.pruned_params)
        data["flagged"] = self.flagged_channels()
        data["channels_total"] = self.channels_total
        data["flagged_total"] = self.flagged_total
        if self.verdict is not None:
            data["verdict"] = self.verdict.to_dict()
        return {"schema_version": SCHEMA_VERSION, **_finite(data)}


@dataclass
class ScanFailure:
    """A checkpoint of a multi-checkpoint scan that could not be scanned: ``error`` is the one-line
    message the CLI prints for it (it names the file), ``sha256`` the file's digest when it was read."""

    checkpoint: str
    error: str
    sha256: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``schema_version``, ``checkpoint``, ``sha256`` and ``error``."""
        return {"schema_version": SCHEMA_VERSION, "checkpoint": self.checkpoint, "sha256": self.sha256, "error": self.error}


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
