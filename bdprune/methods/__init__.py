"""Scoring methods: the faithful ``bnp``, ``ep`` and ``clp``, behind one interface and registry."""

from .base import METHODS, Method, ScoreContext
from . import bnp, clp, ep  # noqa: F401  (registers the methods)

__all__ = ["METHODS", "Method", "ScoreContext"]
