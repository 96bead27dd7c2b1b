"""``python -m bdprune``."""

from .cli import main

main()
