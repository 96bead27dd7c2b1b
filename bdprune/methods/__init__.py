"""Scoring methods: the faithful ``bnp``, ``ep`` and ``clp`` and bdprune's ``bnp+``, behind one interface and registry."""

from .base import METHODS, Method, ScoreContext
from . import bnp, bnp_plus, clp, ep  # noqa: F401  (registers the methods)

__all__ = ["METHODS", "Method", "ScoreContext"]
