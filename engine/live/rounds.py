"""Live migration: pre-copy rounds while the source runs, then a short, measured stop.

Round 0 sends every page while the source keeps running; each later round sends the pages
that the dirty tracker (engine/live/dirty.py) reports changed since its previous look, and ends
with a sync (the destination's barrier). Each round measures the rate (pages sent / the
round's time from first send to the barrier's release; zero pages are cheap, so a page
count, not bytes, is what predicts the next round) and each look measures the dirty rate.

The downtime is measured from asking for the pause to the destination's verdict, so it
includes a last look and verification. The engine therefore expects a stop to take: one look
+ the dirty pages (those found, plus those the source dirties during one more look) at the
last round's rate + verification: folded (the default), hashing both ends' page-hash arrays
(16 bytes per page at FOLD_BYTES_PER_S); with --verify reread, VERIFY_PASSES full hash passes
over the image (a hash-tracking look is one such pass; with the log, one pass is timed once
after round 0). When that fits the downtime limit, it pauses the source, takes
the last look, sends those pages and the device state, and completes.

Policy when the source dirties pages faster than the link carries them: after
`max_rounds` rounds sent while the source ran, or once the expected stop has not got
shorter for STALL_LOOKS looks in a row, "switchover" (the default) pauses the source
anyway; the migration completes with a longer downtime and reports converged=false.
"fail" raises NotConverged without ever pausing the source, which keeps running.

As in QEMU, the source stays paused after a successful migration (the caller decides whether
to kill or resume it), and is resumed if anything fails after it was paused.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from engine.live.dirty import DirtyTracker, HashTracker, make_tracker
from engine.errors import NotConverged
from engine.coordinator.dispatcher import Acked
from engine.coordinator.local import check_inputs, run_locally
from engine.coordinator.result import LiveResult, TransferResult
from engine.settings import CONNECT_TIMEOUT_S, PAGE_SIZE, LiveSettings, TransferSettings
from engine.coordinator.sender import Sender

Devices = Mapping[str, bytes | str | os.PathLike]
DOWNTIME_PARTS = ("pause", "look", "copy", "verify")
# Verification, in page-hash passes over the image: it hashes the image on both ends, each
# slower than a page-hash pass. Measured (examples/live_guest.py, docs/live.md): 0.9-1.6
# passes for 256 MiB; 3.3-4.5 for 1 GiB while digest.hash_segment's extent lookups were
# quadratic (fixed: digest.Extents). Erring high costs a round; erring low breaks the limit.
VERIFY_PASSES = 2
# What hashing the folded page-hash arrays runs at, erring low (xxh3 does ~10 GB/s here).
FOLD_BYTES_PER_S = 1e9
# The rounds have stalled when STALL_LOOKS looks in a row expected a stop no shorter than
# STALL_SHRINK of the shortest expected yet: the source dirties pages as fast as they go, and
# more rounds only cost time (a 1 GiB guest ran all 30 rounds, 15 s, for nothing).
STALL_LOOKS = 3
STALL_SHRINK = 0.9
# A stop is expected to fit only if the estimate is within this share of the limit: measured
# stops of 1 GiB writers came out 5-25% longer than estimated (BENCHMARKS.md, "live"), and a
# migration that says it converged must keep the limit.
ESTIMATE_MARGIN = 0.8


@dataclass(frozen=True)
class RoundReport:
    """One round sent while the source ran, and what the look after it found."""

    round: int
    pages: int
    seconds: float
    dirty_pages: int
    dirty_rate: float
    expected_downtime_ms: float

    def __str__(self) -> str:
        return (f"round {self.round}: {self.pages:,} pages in {self.seconds:.3f} s; then "
                f"{self.dirty_pages:,} dirty ({self.dirty_rate / (1 << 20):,.0f} MiB/s), a "
                f"stop would take ~{self.expected_downtime_ms:.0f} ms")


def migrate_live(source: str, destination: str, settings: TransferSettings = TransferSettings(),
                 live: LiveSettings = LiveSettings(), *, pause: Callable[[], None],
                 resume: Callable[[], None] | None = None,
                 devices: Devices | Callable[[], Devices] | None = None,
                 device_dir: str | os.PathLike | None = None, force: bool = False,
                 on_round: Callable[[RoundReport], None] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S,
                 progress: Callable[[Acked], None] | None = None,
                 max_bandwidth: int | str | None = None) -> LiveResult:
    """Migrate a running source to `destination` on this machine (see run_live);
    `progress`: the Sender's, called for every round's acknowledged units; `max_bandwidth`:
    as migrate()'s."""
    check_inputs(source, destination, None if callable(devices) else devices, device_dir, force)
    return run_locally(source, destination,
                       lambda sender: run_live(sender, live, pause=pause, resume=resume,
                                               devices=devices, on_round=on_round),
                       settings, device_dir, force, progress,
                       max_bandwidth=max_bandwidth, connect_timeout=connect_timeout)


def run_live(sender: Sender, live: LiveSettings = LiveSettings(), *,
             pause: Callable[[], None], resume: Callable[[], None] | None = None,
             devices: Devices | Callable[[], Devices] | None = None,
             on_round: Callable[[RoundReport], None] | None = None) -> LiveResult:
    """Send the running source in rounds through a started `sender`, pause it, complete.

    pause() must return once the source no longer writes; resume() is called if the
    migration fails after the pause. `devices` (or the mapping it returns, called after the
    pause) is the device state to send: name -> bytes or a file's path.
    """
    tracker = make_tracker(live.dirty, sender)
    try:
        return _Precopy(sender, live, tracker).run(pause, resume, devices, on_round)
    finally:
        tracker.close()


class _Precopy:
    """The rounds of one live migration and what they measured."""

    def __init__(self, sender: Sender, live: LiveSettings, tracker: DirtyTracker) -> None:
        self.sender = sender
        self.live = live
        self.tracker = tracker
        self.pages: list[int] = []
        self.seconds: list[float] = []
        self.rate = 0.0  # pages per second, in the last round that sent any
        self.hash_pass_s: float | None = None  # one full hash pass over the source

    def run(self, pause: Callable[[], None], resume: Callable[[], None] | None,
            devices: Devices | Callable[[], Devices] | None,
            on_round: Callable[[RoundReport], None] | None) -> LiveResult:
        self.tracker.begin()
        last_look = time.perf_counter()
        self.send_round(None)
        best_ms, stalled = float("inf"), 0  # the shortest stop expected yet; looks since
        while True:
            started = time.perf_counter()
            dirty = self.tracker.collect()
            look_s = time.perf_counter() - started
            dirty_rate = len(dirty) * PAGE_SIZE / (started - last_look)
            last_look = started
            # The last look also finds what the source dirties while it runs.
            copy_s = ((len(dirty) + dirty_rate / PAGE_SIZE * look_s) / self.rate
                      if self.rate else 0.0)  # no rate: an empty image, nothing to copy
            expected_ms = 1000 * (look_s + copy_s + self.verify_estimate(look_s))
            if on_round is not None:
                on_round(RoundReport(round=len(self.pages) - 1, pages=self.pages[-1],
                                     seconds=self.seconds[-1], dirty_pages=len(dirty),
                                     dirty_rate=dirty_rate, expected_downtime_ms=expected_ms))
            # Round 0's rate counts every page, and a fresh region's zero pages are nearly
            # free: it promised a 1 GiB writer's stop 112 ms that took 279. Only the rate of a
            # round of dirty pages predicts the copy of dirty pages.
            measured = len(self.pages) > 1 or not len(dirty)
            converged = measured and expected_ms <= ESTIMATE_MARGIN * self.live.downtime_limit_ms
            stalled = 0 if expected_ms < STALL_SHRINK * best_ms else stalled + 1
            best_ms = min(best_ms, expected_ms)
            if converged or len(self.pages) >= self.live.max_rounds or stalled >= STALL_LOOKS:
                break
            self.send_round(dirty)
        if not converged and self.live.on_no_convergence == "fail":
            why = " (the stop it needs stopped getting shorter)" \
                if len(self.pages) < self.live.max_rounds else ""
            raise NotConverged(
                f"live migration did not converge in {len(self.pages)} rounds{why}: the source "
                f"dirtied {len(dirty)} pages since the last round; a stop would take "
                f"~{expected_ms:.0f} ms, more than the {self.live.downtime_limit_ms} ms "
                f"downtime limit allows with its margin "
                f"({ESTIMATE_MARGIN * self.live.downtime_limit_ms:.0f} ms); the source was "
                "not paused")
        rate = self.rate * PAGE_SIZE  # before the last round, sent with the source paused
        result, downtime = self.switchover(dirty, pause, resume, devices)
        return LiveResult(
            transfer=result, dirty=self.live.dirty,
            pages_per_round=self.pages, seconds_per_round=self.seconds,
            rate=rate, dirty_rate=dirty_rate,
            downtime_limit_ms=self.live.downtime_limit_ms, expected_downtime_ms=expected_ms,
            downtime_ms=sum(downtime.values()), downtime_parts_ms=downtime, converged=converged)

    def verify_estimate(self, look_s: float) -> float:
        """Seconds that verification will take: folded, both ends hash their 8-byte-per-page
        arrays (FOLD_BYTES_PER_S); re-read, VERIFY_PASSES full hash passes."""
        if self.sender.settings.verify == "fold":
            return 2 * 8 * self.sender.pages / FOLD_BYTES_PER_S
        if self.tracker.kind == "hash":
            return VERIFY_PASSES * look_s  # the look itself hashed every page
        if self.hash_pass_s is None:  # the log's looks hash nothing: time a pass, once
            # (its page hashes then stay in the workers, 8 bytes per page, unused). The
            # first pass faults the pages into each worker and is 2-3x slower: time the next.
            passes = HashTracker(self.sender)
            passes.begin()
            started = time.perf_counter()
            passes.collect()
            self.hash_pass_s = time.perf_counter() - started
        return VERIFY_PASSES * self.hash_pass_s

    def send_round(self, pages: np.ndarray | None, devices: Devices | None = None) -> None:
        """Send `pages` (None: the whole image) and `devices`, then wait for the barrier."""
        started = time.perf_counter()
        if pages is None:
            self.sender.send_range()
        else:
            self.sender.send_pages(pages)
        for name, state in (devices or {}).items():
            self.sender.send_device(name, state)
        self.sender.sync()
        count = self.sender.pages if pages is None else len(pages)
        self.pages.append(count)
        self.seconds.append(time.perf_counter() - started)
        if count:
            self.rate = count / self.seconds[-1]

    def switchover(self, dirty: np.ndarray, pause: Callable[[], None],
                   resume: Callable[[], None] | None,
                   devices: Devices | Callable[[], Devices] | None
                   ) -> tuple[TransferResult, dict[str, float]]:
        """Pause, send what is still dirty and the device state, verify. Returns the result
        and the downtime's parts in milliseconds."""
        stamps = [time.perf_counter()]
        try:
            pause()
            stamps.append(time.perf_counter())
            final = np.union1d(dirty, self.tracker.collect())  # `dirty` was never sent
            stamps.append(time.perf_counter())
            self.send_round(final, devices() if callable(devices) else devices)
            stamps.append(time.perf_counter())
            result = self.sender.finish()
            stamps.append(self.sender.verified_at)
        except BaseException as error:
            if resume is not None:
                _resume(resume, error)
            raise
        parts = {name: 1000 * (end - start)
                 for name, start, end in zip(DOWNTIME_PARTS, stamps, stamps[1:])}
        return result, parts


def _resume(resume: Callable[[], None], error: BaseException) -> None:
    try:
        resume()
    except Exception as exc:  # the migration's own error is the one to report
        error.add_note(f"resuming the source failed too: {exc}")
