"""The page-stamp guest: a boot sector that keeps stamping pages, built from source.

build_guest() makes its disk image; layout reads its progress from the RAM file; launch
starts QEMU with it (TCG, RAM in a shared file).
"""
from engine.qemu.guest.build import GuestBuildError, build_guest
from engine.qemu.guest.layout import (GENERATION_OFFSET, HEADER, InconsistentMemory,
                                      check_consistent, read_generation, read_header)

__all__ = ["GENERATION_OFFSET", "GuestBuildError", "HEADER", "InconsistentMemory",
           "build_guest", "check_consistent", "read_generation", "read_header"]
