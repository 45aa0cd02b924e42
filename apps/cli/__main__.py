"""``python -m vigil.apps.cli``."""

from vigil.apps.cli import main

main()
