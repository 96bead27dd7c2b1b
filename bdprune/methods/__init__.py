"""Scoring methods: the faithful ``bnp``, ``ep`` and ``clp``, the learned-mask ``anp`` and ``rnp``, and bdprune's ``bnp+``, behind one interface and registry."""

from .base import METHODS, Method, ScoreContext
from . import anp, bnp, bnp_plus, clp, ep, rnp  # noqa: F401  (registers the methods)

__all__ = ["METHODS", "Method", "ScoreContext"]
