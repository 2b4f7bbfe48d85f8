"""Two ends in one script, two rounds: the pages that change after round 0 are re-sent.

    python examples/rounds.py --size 32M --rounds 3

This is the Sender/Receiver API that a live-migration loop is built on: send everything,
sync, send what changed, sync, ..., finish. Each sync() is a barrier across all channels, so
a page re-sent on another channel can never be overwritten by its older copy.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

import engine
from engine.tools.samples import write_sample
from engine.settings import PAGE_SIZE
from engine.units import parse_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="32M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "src", Path(folder) / "dst"
        write_sample(src, parse_size(args.size), seed=7)
        pages = src.stat().st_size // PAGE_SIZE
        rng = np.random.default_rng(0)
        with engine.Receiver(str(dst)) as receiver:
            outcome = {}
            thread = threading.Thread(target=lambda: outcome.update(result=receiver.run(60)))
            thread.start()
            settings = engine.TransferSettings(channels=args.channels, compress="zstd")
            with engine.Sender(str(src), str(receiver.endpoint), settings) as sender:
                sender.send_range()
                for round_ in range(args.rounds):
                    done = sender.sync()
                    changed = np.unique(rng.integers(0, pages, max(1, pages // 50)))
                    with open(src, "r+b") as f:  # the "guest" writes between rounds
                        for page in changed:
                            f.seek(int(page) * PAGE_SIZE)
                            f.write(os.urandom(PAGE_SIZE))
                    print(f"round {done} synced; {len(changed)} pages changed since")
                    sender.send_pages(changed)
                result = sender.finish()
            thread.join()
        same = src.read_bytes() == dst.read_bytes()
        print(f"{result.rounds} rounds, verified: {result.ok}, identical: {same}")


if __name__ == "__main__":
    main()
