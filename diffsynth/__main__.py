"""`python -m diffsynth animate ...` / `python -m diffsynth download ...` (see diffsynth/cli.py)."""
import sys

from .cli import main

sys.exit(main())
