"""Find which conv (or linear) layer feeds each BatchNorm, by data flow.

Like ``torch.fx.experimental.optimization.fuse``: trace the model symbolically and pair a BN
node with the module node whose output is its input. Registration order is never used, so
pre-activation blocks (BN before conv) and modules registered out of order pair correctly, and a
BN fed by anything else (an addition, the network input) is reported as unpaired.

Every BatchNorm is traced as one leaf module, subclasses included: timm's ``BatchNormAct2d``
(BN, then an activation, in one module) and any home-made subclass would otherwise be traced
through into ``F.batch_norm`` calls, leaving no BN module for a conv to feed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import BdpruneError

FEEDERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Pairing:
    """``pairs`` maps BN name -> feeding conv/linear name; ``unpaired`` maps BN name -> reason."""

    pairs: dict[str, str] = field(default_factory=dict)
    unpaired: dict[str, str] = field(default_factory=dict)


def pair_conv_bn(model: nn.Module) -> Pairing:
    """Pair every BN layer of ``model`` (any ``_BatchNorm`` subclass) with the conv/linear module that feeds it."""
    try:
        graph = _tracer().trace(model)
    except Exception as exc:  # tracing fails on data-dependent control flow
        raise BdpruneError(
            f"torch.fx cannot trace this architecture to find conv->BN pairs ({type(exc).__name__}: {str(exc)[:120]})",
            hint="use a data-driven method (--method bnp or ep) with --data",
        ) from None
    modules = dict(model.named_modules())
    result = Pairing()
    seen = set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        bn_name = str(node.target)
        if bn_name in seen:
            result.pairs.pop(bn_name, None)
            result.unpaired[bn_name] = "it is applied more than once"
            continue
        seen.add(bn_name)
        source = node.args[0] if node.args else None
        if getattr(source, "op", None) == "call_module" and isinstance(modules.get(source.target), FEEDERS):
            result.pairs[bn_name] = str(source.target)
        else:
            what = getattr(source, "op", "?")
            label = f"{what} {getattr(source, 'target', '')}".strip()
            result.unpaired[bn_name] = f"its input comes from {label!s}, not a conv or linear layer"
    for name, module in modules.items():
        if isinstance(module, _BatchNorm) and name not in seen:
            result.unpaired[name] = "it is never called in forward()"
    return result


def _tracer():
    """torch.fx's tracer, with every BatchNorm (subclasses too) kept as one call_module node."""
    import torch.fx

    class BatchNormLeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return isinstance(m, _BatchNorm) or super().is_leaf_module(m, module_qualified_name)

    return BatchNormLeafTracer()
