"""`python -m engine ...`: the same as the `multifd` command."""
import sys

from engine.cli import main

sys.exit(main())
