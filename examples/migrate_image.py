"""Migrate a memory image and two device blobs on this machine, then print the summary.

    python examples/migrate_image.py --size 64M --compress zstd:1 --channels 2

It makes a mixed sample image (zero pages, text, machine code, random) in a temporary
folder, copies it with `engine.migrate`, and checks the copy byte for byte.
"""
from __future__ import annotations

import argparse
import filecmp
import tempfile
from pathlib import Path

import engine
from engine.tools.samples import sample_bytes, write_sample
from engine.units import parse_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64M", help="image size (default 64M)")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--compress", default="zstd:1")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "guest.ram", Path(folder) / "copy.ram"
        write_sample(src, parse_size(args.size), kind="mixed", seed=1)
        devices = {"cpu": sample_bytes(64 << 10, kind="binary"),
                   "virtio-net": sample_bytes(3 << 20, kind="mixed", seed=2)}
        settings = engine.TransferSettings(channels=args.channels, compress=args.compress)
        result = engine.migrate(str(src), str(dst), settings, devices=devices)
        assert filecmp.cmp(src, dst, shallow=False)
        for name, data in devices.items():
            assert (Path(folder) / "copy.ram.devices" / name).read_bytes() == data
        print(f"verified {result.bytes >> 20} MiB in {result.seconds:.2f} s "
              f"({result.gib_per_s:.2f} GiB/s), {result.wire_bytes >> 20} MiB on the wire, "
              f"{result.zero_pages} zero pages, devices {result.devices}")


if __name__ == "__main__":
    main()
