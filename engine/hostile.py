"""`python -m engine.hostile`: the hostile-input tool (engine/tools/hostile/)."""
import sys

from engine.tools.hostile.runner import main

if __name__ == "__main__":
    sys.exit(main())
