"""Build the page-stamp guest (stamp.S) into a bootable raw disk image, at test time.

Only GNU binutils are needed (`as`, `ld`, `objcopy`; Debian's `binutils`), so the guest
is built from its source on every machine rather than shipped as a binary.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("stamp.S")
LOAD_ADDRESS = 0x7C00  # where the BIOS puts a boot sector
DISK_BYTES = 1 << 20  # SeaBIOS boots a 1-sector disk too; 1 MiB keeps the geometry ordinary
TOOLS = ("as", "ld", "objcopy")


class GuestBuildError(RuntimeError):
    """The toolchain is missing or failed; the message says which step."""


def build_guest(out_dir: str | Path, *, stamp_start: int = 0x200000, stamp_pages: int = 1024,
                spin: int = 0) -> Path:
    """Assemble the guest and return the path of a raw disk image that boots it.

    stamp_start, stamp_pages: the stamped range (page-aligned, above the header at 1 MiB,
    inside the guest's RAM). spin: idle loop iterations after each pass, to lower the
    dirty rate (0: stamp as fast as the CPU goes; under TCG that is ~10^4 passes/s for
    1024 pages).
    """
    if stamp_start % 4096 or stamp_start < 0x101000 or stamp_pages < 1 or spin < 0:
        raise ValueError("stamp_start must be page-aligned and above 1 MiB + 4 KiB; "
                         "stamp_pages >= 1; spin >= 0")
    if stamp_start + stamp_pages * 4096 > 0xE0000000:
        raise ValueError("the stamped range must stay below 3.5 GiB (the PCI hole)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise GuestBuildError(f"cannot build the guest: {', '.join(missing)} not found "
                              f"(install binutils)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    obj, elf, boot = out / "stamp.o", out / "stamp.elf", out / "stamp.bin"
    symbols = {"STAMP_START": stamp_start, "STAMP_PAGES": stamp_pages, "SPIN": spin}
    defsyms = [arg for name, value in symbols.items() for arg in ("--defsym", f"{name}={value}")]
    _run(["as", "--32", *defsyms, "-o", obj, SOURCE], "assembling")
    _run(["ld", "-m", "elf_i386", "-Ttext", hex(LOAD_ADDRESS), "-e", "_start", "-o", elf, obj],
         "linking")
    _run(["objcopy", "-O", "binary", elf, boot], "extracting the boot sector")
    sector = boot.read_bytes()
    if len(sector) != 512 or sector[510:] != b"\x55\xaa":
        raise GuestBuildError(f"{boot}: expected a 512-byte boot sector, got {len(sector)} bytes")
    disk = out / "stamp.img"
    disk.write_bytes(sector.ljust(DISK_BYTES, b"\0"))
    return disk


def _run(argv: list, step: str) -> None:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise GuestBuildError(f"{step} the guest failed: {done.stderr.strip()}")
