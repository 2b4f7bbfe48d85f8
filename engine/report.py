"""How a result is shown: one JSON line for machines, a table for people."""
from __future__ import annotations

import json

from engine.result import TransferResult


def json_line(result: TransferResult) -> str:
    return json.dumps(result.to_json(), sort_keys=True)


def print_summary(result: TransferResult, title: str = "transfer verified") -> None:
    from rich.console import Console  # only here: a --json run starts faster without rich
    from rich.table import Table
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    mib = 1 << 20
    ratio = result.wire_bytes / result.bytes if result.bytes else 0.0
    rows = [
        ("image", f"{result.bytes / mib:,.1f} MiB"),
        ("time", f"{result.seconds:.3f} s"),
        ("rate", f"{result.gib_per_s:.2f} GiB/s"),
        ("on the wire", f"{result.wire_bytes / mib:,.1f} MiB ({ratio:.2f} of the image)"),
        ("pages", f"{result.normal_pages:,} sent, {result.zero_pages:,} zero"),
        ("channels", str(result.channels)),
        ("compression", result.compress),
        ("rounds", str(result.rounds)),
        ("digest", result.digest),
    ]
    rows += [(f"device {name}", f"{size:,} bytes") for name, size in result.devices.items()]
    rows += [(f"channel {i}", f"{c.bytes / mib:,.1f} MiB, {c.packets} packets, "
                              f"busy {c.busy_s:.2f} s")
             for i, c in enumerate(result.per_channel)]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
