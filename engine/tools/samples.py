"""Synthetic memory images for the demo and the load tester.

A guest's RAM is mostly zero pages, then text, machine code and structured data, and some
already-compressed (random-looking) data. Transfer speed and compression figures depend on
that mix, so the samples imitate it: in a mixed image, page kinds come in irregular runs, and
text and binary pages are cut at random offsets from a few MiB of varied material, so pages
are never byte-identical copies and compressors see realistic input.

Output is streamed one block of pages at a time, and each block is seeded from
(seed, block number): any size works, memory stays bounded whatever the size, and the same
kind, size and seed always give the same bytes.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from os import PathLike

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

KINDS: tuple[str, ...] = ("zero", "text", "binary", "random", "mixed")
PAGE = 4096

# Page codes are indices into KINDS; a mixed image is a layout of the first four.
_TEXT, _BINARY, _RANDOM = 1, 2, 3
_MIX_SHARES = (0.40, 0.25, 0.20, 0.15)  # zero, text, binary, random share of a mixed image
_RUN_P = 1 / 8  # mixed runs are geometric(1/8) pages long (mean about 8), capped at 64
_MAX_RUN = 64
_RUNS_PER_DRAW = 256  # layout runs drawn at a time, about 2000 pages
_BLOCK_PAGES = 256  # 1 MiB per block: the unit of seeding, generation and writing
_POOL_SIZE = 4 << 20
# The pools are the same for every image (built once per process); an image's seed picks
# its layout and the offsets that pages are cut from.
_POOL_SEED = 20240517
_LAYOUT_STREAM, _CONTENT_STREAM = 0, 1


def write_sample(path: str | PathLike[str], size: int, kind: str = "mixed",
                 seed: int = 0) -> None:
    """Write a `size`-byte image of `kind` to `path`, 1 MiB at a time."""
    blocks = _generate(size, kind, seed)  # validate before creating the file
    with open(path, "wb") as f:
        for block in blocks:
            f.write(block)


def sample_bytes(size: int, kind: str = "mixed", seed: int = 0) -> bytes:
    """The bytes write_sample would write, for blobs small enough to hold (device state)."""
    return b"".join(_generate(size, kind, seed))


def page_kinds(size: int, kind: str = "mixed", seed: int = 0) -> np.ndarray:
    """The kind of each page of that image, as indices into KINDS (a partial last page counts).

    Only "mixed" has a layout worth asking for; the other kinds give one code throughout.
    """
    _check(size, kind, seed)
    return np.concatenate([np.empty(0, np.uint8), *_layout(_pages(size), kind, seed)])


def _check(size: int, kind: str, seed: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown sample kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if size < 0 or seed < 0:
        raise ValueError(f"sample size and seed must not be negative, got {size} and {seed}")


def _pages(size: int) -> int:
    return -(-size // PAGE)


def _generate(size: int, kind: str, seed: int) -> Iterator[np.ndarray]:
    """Check the arguments now, then yield the image as flat uint8 blocks."""
    _check(size, kind, seed)
    return _blocks(size, kind, seed)


def _blocks(size: int, kind: str, seed: int) -> Iterator[np.ndarray]:
    for number, codes in enumerate(_layout(_pages(size), kind, seed)):
        rng = np.random.Generator(np.random.SFC64([seed, _CONTENT_STREAM, number]))
        block = _fill(codes, rng).reshape(-1)
        yield block[: size - number * _BLOCK_PAGES * PAGE]


def _layout(pages: int, kind: str, seed: int) -> Iterator[np.ndarray]:
    """Yield the page codes block by block.

    A mixed layout is drawn as one stream of runs, so runs cross block boundaries and the
    layout of a shorter image is a prefix of that of a longer one with the same seed.
    """
    starts = range(0, pages, _BLOCK_PAGES)
    if kind != "mixed":
        for start in starts:
            yield np.full(min(_BLOCK_PAGES, pages - start), KINDS.index(kind), np.uint8)
        return
    rng = np.random.Generator(np.random.SFC64([seed, _LAYOUT_STREAM]))
    pending = np.empty(0, np.uint8)
    for start in starts:
        want = min(_BLOCK_PAGES, pages - start)
        while pending.size < want:
            codes = rng.choice(len(_MIX_SHARES), _RUNS_PER_DRAW, p=_MIX_SHARES).astype(np.uint8)
            lengths = np.minimum(rng.geometric(_RUN_P, _RUNS_PER_DRAW), _MAX_RUN)
            pending = np.concatenate([pending, np.repeat(codes, lengths)])
        yield pending[:want]
        pending = pending[want:]


def _fill(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One block of pages, shaped (pages, PAGE), with the content each code asks for."""
    out = np.zeros((codes.size, PAGE), np.uint8)
    for code, build in ((_TEXT, _text_pool), (_BINARY, _binary_pool)):
        rows = np.flatnonzero(codes == code)
        if rows.size:
            windows = _windows(build)
            out[rows] = windows[rng.integers(0, len(windows), rows.size)]
    rows = np.flatnonzero(codes == _RANDOM)
    if rows.size:
        # Raw generator words are the fastest random bytes numpy offers; fixing their byte
        # order keeps images identical on big-endian machines too.
        words = rng.bit_generator.random_raw(rows.size * PAGE // 8).astype("<u8", copy=False)
        out[rows] = words.view(np.uint8).reshape(rows.size, PAGE)
    return out


@functools.cache
def _windows(build: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
    """Every PAGE-long window of a pool, as rows (a view: no copy is made)."""
    return sliding_window_view(build(np.random.default_rng(_POOL_SEED)), PAGE)


# Text: prose and log lines. Function words are English; content words are made of
# syllables, so the vocabulary is large (realistic entropy) without a word list.
_FUNCTION_WORDS = ("the of and to a in is that it for was on are as with be at by this "
                   "from or have an not but all were when we there can which their if will "
                   "each has more one out into so some other").split()
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "st", "pr", "tr", "ch", "sh", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng"]
_LEVELS = ["INFO ", "INFO ", "INFO ", "DEBUG", "DEBUG", "WARN ", "ERROR"]
_SERVICES = ["api", "worker", "scheduler", "db-pool", "cache", "auth", "migrate", "net"]


def _text_pool(rng: np.random.Generator) -> np.ndarray:
    """About 4 MiB of paragraphs and bursts of log lines, all printable ASCII.

    There are no zero bytes, so no text page is ever all zero.
    """
    syllables = [o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS]
    shapes = rng.integers(len(syllables), size=(3000, 3)).tolist()
    lengths = rng.choice([1, 2, 3], 3000, p=[0.3, 0.5, 0.2]).tolist()
    content = {"".join(syllables[i] for i in shape[:n]) for shape, n in zip(shapes, lengths)}
    vocabulary = _FUNCTION_WORDS + sorted(content)
    # Each token carries its separator: a space, a sentence end or a paragraph end; the word
    # after an end is capitalised.
    tokens = [(w.capitalize() if capital else w) + separator
              for capital in (False, True) for separator in (" ", ". ", ".\n\n")
              for w in vocabulary]
    zipf = np.cumsum(np.arange(1, len(vocabulary) + 1) ** -1.1)

    def words(count: int) -> np.ndarray:
        return np.searchsorted(zipf, rng.random(count) * zipf[-1])

    # Programs log the same few hundred messages over and over.
    messages = ["".join(map(tokens.__getitem__, phrase))
                for phrase in words(6 * 300).reshape(300, 6).tolist()]
    pool, clock, request = bytearray(), 1_700_000_000.0, 0x3A7F0000
    while len(pool) < _POOL_SIZE:
        if rng.random() < 0.5:  # a few paragraphs
            picks = words(int(rng.integers(100, 1000)))
            chance = rng.random(picks.size)
            ends = (chance < 1 / 12).astype(np.int64) + (chance < 1 / 150)
            ends[-1] = 2  # so the next paragraph starts afresh, and this one is capitalised
            picks += len(vocabulary) * (ends + 3 * (np.roll(ends, 1) > 0))
            pool += "".join(map(tokens.__getitem__, picks.tolist())).encode()
            continue
        lines = int(rng.integers(10, 60))  # a burst of log lines
        times = clock + np.cumsum(rng.exponential(0.05, lines))
        requests = request + np.cumsum(rng.integers(1, 40, lines))
        clock, request = times[-1], requests[-1]
        for t, level, service, worker, rid, took, message in zip(
                times.tolist(), rng.integers(len(_LEVELS), size=lines).tolist(),
                rng.integers(len(_SERVICES), size=lines).tolist(),
                rng.integers(8, size=lines).tolist(),
                requests.tolist(),
                rng.exponential(20, lines).tolist(),
                rng.integers(len(messages), size=lines).tolist()):
            pool += (f"2024-05-17 {int(t) // 3600 % 24:02d}:{int(t) // 60 % 60:02d}:"
                     f"{t % 60:06.3f} {_LEVELS[level]} [{_SERVICES[service]}-{worker}] "
                     f"{messages[message]}"
                     f"req={rid:08x} took={took:.1f}ms\n").encode()
    return np.frombuffer(pool, np.uint8)


# Binary: x86-64 instructions, weighted by how common they are in compiled code. Each is
# written as hex with "??" for a byte that varies (displacements, immediates, call targets).
_INSTRUCTIONS = {
    "55": 3, "5d": 2, "c3": 3, "c9": 1, "cc": 2, "90": 2,  # push/pop rbp, ret, leave, int3, nop
    "48 89 e5": 3, "48 83 ec ??": 2, "48 83 c4 ??": 2,  # frame setup and teardown
    "48 8b 45 ??": 6, "48 89 45 ??": 5, "8b 45 ??": 4, "89 45 ??": 4, "48 89 7d ??": 3,
    "48 8b 05 ?? ?? 00 00": 3, "48 8d 3d ?? ?? 00 00": 3, "48 8d 05 ?? ?? ff ff": 2,
    "e8 ?? ?? 00 00": 4, "e8 ?? ?? ff ff": 4, "74 ??": 4, "75 ??": 4, "eb ??": 3,
    "0f 84 ?? ?? 00 00": 1, "48 85 c0": 4, "85 c0": 3, "31 c0": 2, "48 89 c7": 3,
    "48 89 df": 2, "4c 89 e6": 1, "b8 ?? 00 00 00": 2, "48 83 f8 ??": 2, "83 f8 ??": 2,
    "0f b6 45 ??": 1, "0f 1f 40 00": 1, "0f 1f 44 00 00": 1, "66 0f 1f 44 00 00": 1,
}


# Where user-space pointers point: the executable's heap, two libraries, the stack.
_REGIONS = np.array([0x55D4_1A20_0000, 0x7F3A_1C40_0000, 0x7F3A_2E00_0000, 0x7FFC_8B10_0000],
                    np.uint64)


def _binary_pool(rng: np.random.Generator) -> np.ndarray:
    """About 4 MiB of code, pointer tables, small integers and records, in segments.

    Every kind of segment has a non-zero byte at least every 8 bytes (opcodes, the 0x7f of
    user-space pointers, integers from 1 up), so no binary page is ever all zero.
    """
    makers = (_code, _pointers, _small_ints, _records)
    segments, total = [], 0
    while total < _POOL_SIZE:
        make = makers[rng.choice(len(makers), p=(0.5, 0.15, 0.15, 0.2))]  # code the most
        segments.append(make(rng, int(rng.integers(1 << 10, 16 << 10))))
        total += segments[-1].size
    return np.concatenate(segments)


@functools.cache
def _instruction_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The instructions as padded byte rows, with masks for used and varying bytes."""
    encodings = [text.split() for text in _INSTRUCTIONS]
    width = max(map(len, encodings))
    table = np.zeros((len(encodings), width), np.uint8)
    used = np.zeros_like(table, bool)
    varies = np.zeros_like(table, bool)
    for row, encoding in enumerate(encodings):
        for col, byte in enumerate(encoding):
            used[row, col] = True
            varies[row, col] = byte == "??"
            table[row, col] = 0 if byte == "??" else int(byte, 16)
    weights = np.array(list(_INSTRUCTIONS.values()), float)
    return table, used, varies, weights / weights.sum()


def _code(rng: np.random.Generator, size: int) -> np.ndarray:
    """Machine code: a weighted stream of the instructions above."""
    table, used, varies, weights = _instruction_table()
    picks = rng.choice(len(table), size // 3, p=weights)
    rows = table[picks]
    # Displacements are mostly the first few stack slots (rbp-8, rbp-16, ...).
    slots = np.arange(248, 0, -8, dtype=np.uint8)
    rows[varies[picks]] = slots[np.minimum(rng.geometric(0.25, np.count_nonzero(varies[picks])),
                                           slots.size) - 1]
    return rows[used[picks]][:size]


def _pointers(rng: np.random.Generator, size: int) -> np.ndarray:
    """Tables of 8-byte pointers to objects allocated one after another in a few regions."""
    count = max(size // 8, 1)
    regions = _REGIONS[rng.integers(len(_REGIONS), size=count)]
    offsets = np.cumsum(rng.geometric(0.25, count)).astype(np.uint64) * 16
    return (regions + offsets).astype("<u8").view(np.uint8)


def _small_ints(rng: np.random.Generator, size: int) -> np.ndarray:
    """Counters, lengths and flags: 32-bit integers that are mostly small."""
    return rng.geometric(0.02, max(size // 4, 1)).astype("<u4").view(np.uint8)


def _records(rng: np.random.Generator, size: int) -> np.ndarray:
    """An array of 16-byte structs: sequential id, type, flags, pointer."""
    count = max(size // 16, 1)
    record = np.dtype([("id", "<u4"), ("type", "<u2"), ("flags", "<u2"), ("next", "<u8")])
    out = np.empty(count, record)
    out["id"] = rng.integers(1, 1 << 20) + np.arange(count)
    out["type"] = rng.integers(1, 12, count)
    out["flags"] = rng.choice(np.array([0x1, 0x3, 0x11, 0x101], np.uint16), count)
    out["next"] = _REGIONS[0] + rng.integers(0, 1 << 20, count).astype(np.uint64) * 16
    return out.view(np.uint8)
