"""One pass over the data collecting what the data-driven methods need at every BatchNorm input.

For BNP: per-channel sums of x and x^2 over samples and positions, accumulated in float64, so
any number of batches gives the same numbers as one big batch (up to rounding) and memory does
not grow with the samples.
For EP: per-sample, per-channel spatial maxima (N x C), the only statistic that must grow with N.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import BdpruneError
from .normalize import Normalization, normalizer
from .progress import progress_bar


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every BatchNorm layer of ``model`` with its qualified name, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The last nn.Linear of ``model`` in registration order (its classifier, for most), or None."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None


@dataclass
class LayerStats:
    """What one BN layer's input looked like over the data."""

    channels: int
    count: int = 0  # values per channel: samples x spatial positions
    sum: Tensor | None = None  # float64, C
    sumsq: Tensor | None = None  # float64, C
    maxima: list[Tensor] = field(default_factory=list)  # batches of B x C (float32)

    @property
    def mean(self) -> Tensor:
        """Per-channel mean of the BN input."""
        return self.sum / self.count

    @property
    def var(self) -> Tensor:
        """Per-channel unbiased variance of the BN input (torch's default, as the official code)."""
        centered = self.sumsq - self.sum * self.sum / self.count
        return (centered / max(self.count - 1, 1)).clamp_min(0.0)

    def maxima_matrix(self) -> Tensor:
        """The per-sample spatial maxima as a C x N matrix."""
        return torch.cat(self.maxima).T


# Values reduced at a time by moment_sums on CPU: 512 KiB of float32, which stays in cache.
CHUNK_ELEMENTS = 1 << 17


def moment_sums(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel float64 sums of ``x`` and ``x**2`` over samples and positions (N x C x ...).

    The values are first centred on a per-channel shift (the first sample's mean), then summed
    and squared in the input's dtype a few samples (about CHUNK_ELEMENTS values) at a time in
    one reused buffer, and the chunk sums are accumulated in float64. Centring keeps x**2 free
    of the cancellation that sum(x**2) - sum(x)**2/n suffers when a channel's mean is large
    against its spread, so the variance is as precise as the float32 data (relative error about
    1e-7; float64 inputs are summed in float64). Converting the input to float64 instead cost
    more than the conv before it on CPU. On other devices the whole input is one chunk.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # half-precision sums would round at 1e-3
    n, c = x.shape[0], x.shape[1]
    v = x.reshape(n, c, -1)
    per = n if x.device.type != "cpu" else max(1, CHUNK_ELEMENTS // max(1, v[0].numel()))
    shift = v[0].mean(-1, keepdim=True)  # C x 1
    buffer = torch.empty((min(per, n), *v.shape[1:]), dtype=x.dtype, device=x.device)
    centred_sum = torch.zeros(c, dtype=torch.float64, device=x.device)
    centred_sq = torch.zeros(c, dtype=torch.float64, device=x.device)
    for start in range(0, n, per):
        chunk = v[start : start + per]
        d = torch.sub(chunk, shift, out=buffer[: len(chunk)])
        centred_sum += d.sum((0, 2))
        centred_sq += d.square_().sum((0, 2))
    count = v.shape[0] * v.shape[2]
    s = shift.squeeze(1).to(torch.float64)
    # back to sums of x: sum(x) = sum(d) + n*s, sum(x^2) = sum(d^2) + 2*s*sum(d) + n*s^2
    return centred_sum + count * s, centred_sq + 2 * s * centred_sum + count * s * s


def collect_stats(
    model: nn.Module,
    images: Tensor,
    *,
    device: torch.device,
    batch_size: int = 128,
    moments: bool = True,
    maxima: bool = False,
    normalize: Normalization | None = None,
    show_progress: bool = True,
) -> dict[str, LayerStats]:
    """Run ``images`` (N x C x H x W in [0, 1]) through ``model`` in eval mode and gather BN-input stats."""
    layers = bn_layers(model)
    stats = {name: LayerStats(channels=bn.num_features) for name, bn in layers}

    def hook_for(name: str):
        st = stats[name]

        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0]
            if moments:
                s, ss = moment_sums(x)
                st.sum = s if st.sum is None else st.sum + s
                st.sumsq = ss if st.sumsq is None else st.sumsq + ss
                st.count += x.numel() // x.shape[1]
            if maxima:
                peak = x.amax(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x.clone()
                st.maxima.append(peak.float())

        return hook

    handles = [bn.register_forward_pre_hook(hook_for(name)) for name, bn in layers]
    norm = normalizer(normalize, device)
    model.eval().to(device)
    try:
        with torch.inference_mode(), progress_bar(len(images), "statistics pass", enabled=show_progress) as advance:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size].to(device, non_blocking=True)
                run_forward(model, norm(batch))
                advance(len(batch))
    finally:
        for h in handles:
            h.remove()
    _check_finite(stats)
    return stats


def _check_finite(stats: dict[str, LayerStats]) -> None:
    """Refuse statistics holding NaN/inf: every score computed from them would be meaningless.

    The images are checked finite when read, so a non-finite BN input comes from the checkpoint
    (a NaN/inf weight or running statistic upstream) or from activations overflowing.
    """
    for name, st in stats.items():
        moments_bad = st.sum is not None and not (torch.isfinite(st.sum).all() and torch.isfinite(st.sumsq).all())
        if moments_bad or any(not torch.isfinite(m).all() for m in st.maxima):
            raise BdpruneError(
                f"the input of BatchNorm {name} is NaN or infinite on this data",
                hint="the checkpoint holds NaN/inf weights or statistics upstream of it, or activations overflow; check the checkpoint",
            )


def run_forward(model: nn.Module, batch: Tensor) -> Tensor:
    """``model(batch)``, turning a shape mismatch into a one-line :class:`BdpruneError`."""
    try:
        return model(batch)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BdpruneError(
            f"images of shape {tuple(batch.shape[1:])} do not fit the model ({first})",
            hint="pass data of the model's input size and channel count, or the right --arch",
        ) from None
