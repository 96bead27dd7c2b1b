"""Published clean-data purifications as ``--repair`` choices, each behind the small
:class:`~bdprune.purify.base.Purifier` interface and registered in ``PURIFIERS``: ``fst``
(Feature Shift Tuning), ``sau`` (Shared Adversarial Unlearning) and ``nc`` (Neural Cleanse's
trigger reverse-engineering and unlearning)."""

from . import fst, nc, sau  # noqa: F401  (registers them)
from .base import PURIFIERS, Purified, Purifier, PurifyJob

__all__ = ["PURIFIERS", "Purified", "Purifier", "PurifyJob"]
