"""`python -m reconciler` is the same as the `reconciler` command."""

from reconciler.cli import main

main()
