"""Scan results built by hand for the report tests: no model needed."""

from __future__ import annotations

import torch

from bdprune.scoring import ScanResult, flag_layer
from bdprune.verdict import assess


def make_result(checkpoint: str, *, spike: float = 0.0, method: str = "bnp") -> ScanResult:
    """Two layers of smooth scores; ``spike`` adds one far outlier at layer2 channel 5."""
    g = torch.Generator().manual_seed(0)
    layers = []
    for name, n in (("layer1.bn", 32), ("layer2.bn", 64)):
        scores = 0.01 * torch.rand(n, generator=g, dtype=torch.float64)  # clean-looking KLs
        if name == "layer2.bn":
            scores[5] += spike
        layers.append(flag_layer(name, scores, 3.0, low_is_suspicious=False))
    result = ScanResult(
        checkpoint=checkpoint, arch="smallcnn", method=method, method_reason="test", u=3.0, samples=10, device="cpu",
        layers=layers, low_is_suspicious=False, pruned_params=("weight",),
    )
    result.verdict = assess(result)
    return result
