"""What machine a benchmark ran on: printed with the tables and stored in the JSON."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any


def describe() -> dict[str, Any]:
    import msgpack
    import numpy
    import psutil
    import xxhash
    import zmq
    import zstandard
    return {
        "nproc": os.cpu_count(), "cpu": _cpu_model(), "kernel": platform.release(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "python": sys.version.split()[0], "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(), "zstandard": zstandard.__version__,
        "numpy": numpy.__version__, "msgpack": ".".join(map(str, msgpack.version)),
        "xxhash": xxhash.VERSION, "psutil": psutil.__version__,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
