"""bdprune: audit image-classifier checkpoints for backdoor neurons and prune them."""

__version__ = "0.1.0"
