"""What migrating a shared-RAM QEMU VM asks of QEMU, over QMP (checked on QEMU 7.2).

The engine carries the guest's RAM itself: the RAM is a memory-backend-file with
share=on, so the engine reads (source) or writes (destination) the very file QEMU maps.
QEMU carries only the rest, "device state": CPU registers, devices, and the small non-shared
RAM blocks (pc.bios, pc.rom, ACPI tables; ~300 KB for a small pc machine). Capability
x-ignore-shared makes QEMU leave every share=on RAM block out of that stream; the
destination must set it too, or it expects the RAM pages and the load fails.

QEMU 7.2 has no file: migration URI (8.2 added it). We hand QEMU an open file descriptor
(QMP `getfd` with SCM_RIGHTS, then URI fd:NAME) rather than exec:cat: no shell, no
quoting, no child process, and a missing or unwritable file fails in our process, before
QEMU is touched (an exec:cat that fails is only an EOF to a destination QEMU, and 7.2
exits on a failed load).

Source:       check_ram_file, expect_source -> enable_ignore_shared -> ...rounds...
              -> stop -> save_device_state -> "postmigrate" (or cont, if anything fails
              after the pause) -> restore_capabilities
Destination:  (QEMU started with -incoming defer on DEST) check_ram_file, expect_incoming
              -> enable_ignore_shared -> ...DEST written in place and verified...
              -> load_device_state -> start_guest -> "running" -> restore_capabilities
              A DEST that fails to verify: never load; the QEMU stays waiting, untouched.

SourceVM and DestinationVM wrap these for the engine. Errors are QMPError subclasses
with one-line messages: VmRefused (a check; nothing changed yet) and DeviceStateFailed
from here, NotQMP, CommandFailed, QMPTimeout, QMPConnectionLost from qmp.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from engine.qemu.qmp import QMP, CommandFailed, QMPConnectionLost, QMPError, QMPTimeout

IGNORE_SHARED = "x-ignore-shared"
# The device stream of a stopped VM is small, but a machine with VGA carries its 16 MiB
# vram in it: QEMU's default max-bandwidth (128 MiB/s, enforced in 100 ms windows) would
# then add sleeps to the pause. The VM is stopped while we save, so there is nothing to
# be gentle with.
SAVE_BANDWIDTH = 1 << 40  # bytes/s
SAVE_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 60.0
POLL_S = 0.05  # fallback query-migrate period; the MIGRATION event normally wakes us first
_FD_NAME = "multifd-device-state"
_MIGRATION_DONE = ("completed", "failed", "cancelled")
# Run states a source may be migrated from (query-status "status").
SOURCE_STATES = ("running", "paused", "prelaunch")


class VmRefused(QMPError):
    """This VM (or its RAM) is not one we can migrate; nothing was changed. One line."""


class DeviceStateFailed(QMPError):
    """QEMU could not save or load its device state."""


@dataclass(frozen=True)
class RamBackend:
    """The memory backend that holds the machine's RAM, as QEMU reports it."""

    id: str  # the -object id, e.g. "ram0"
    qom_path: str  # "/objects/ram0"
    type: str  # "memory-backend-file", "memory-backend-memfd", "memory-backend-ram"
    size: int
    share: bool
    mem_path: str | None  # only memory-backend-file has one


@dataclass(frozen=True)
class MigrationResult:
    """How one save or load went, from query-migrate and our own clock."""

    status: str
    seconds: float
    info: dict


# -- RAM backend ---------------------------------------------------------------------

def ram_backend(qmp: QMP) -> RamBackend:
    """Find the backend of the machine's RAM.

    `qom-get /machine memory-backend` names it (a QOM path, "/objects/ID") both for
    -machine memory-backend=ID and for plain -m (backend "pc.ram"). With -numa node,memdev=
    it is empty: then the one backend not used by a memory device (pc-dimm...) is the
    RAM; several such backends mean RAM in several files, which one SRC cannot hold.
    """
    path = qmp.execute("qom-get", {"path": "/machine", "property": "memory-backend"})
    if not path:
        in_devices = {d.get("data", {}).get("memdev") for d in qmp.execute("query-memory-devices")}
        candidates = [f"/objects/{m['id']}" for m in qmp.execute("query-memdev")
                      if f"/objects/{m['id']}" not in in_devices]
        if len(candidates) != 1:
            raise VmRefused(f"the VM's RAM is spread over {len(candidates)} memory backends "
                            f"({', '.join(candidates) or 'none'}); it must be one file")
        path = candidates[0]
    return _backend_at(qmp, path)


def _backend_at(qmp: QMP, qom_path: str) -> RamBackend:
    def prop(name: str):
        return qmp.execute("qom-get", {"path": qom_path, "property": name})

    kind = prop("type")
    return RamBackend(id=qom_path.rsplit("/", 1)[-1], qom_path=qom_path, type=kind,
                      size=int(prop("size")), share=bool(prop("share")),
                      mem_path=prop("mem-path") if kind == "memory-backend-file" else None)


def check_ram_file(qmp: QMP, ram_file: str | os.PathLike) -> RamBackend:
    """Check that `ram_file` is the shared file this VM's RAM lives in; raise VmRefused.

    Compares by (st_dev, st_ino), so a symlink or another name of the same file passes
    and a copy does not. A relative mem-path is QEMU's, resolved in QEMU's working
    directory. Also refuses other share=on backends (a pc-dimm's): x-ignore-shared would
    leave them out of QEMU's stream too, and nobody would carry them.
    """
    backend = ram_backend(qmp)
    if backend.type != "memory-backend-file":
        raise VmRefused(f"the VM's RAM ({backend.id}) is a {backend.type}, not a "
                        f"memory-backend-file: there is no file to carry")
    if not backend.share:
        raise VmRefused(f"the VM's RAM backend {backend.id} has share=off: QEMU's writes stay "
                        f"private to it, the file {backend.mem_path} does not see them "
                        f"(use share=on)")
    mine = _stat(Path(ram_file), "the RAM file")
    theirs = _stat(_qemu_side_path(qmp, backend.mem_path), "the VM's mem-path")
    if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        raise VmRefused(f"{ram_file} is not the VM's RAM: its backend {backend.id} maps "
                        f"{backend.mem_path}")
    mapped = _mapped_files(qmp.peer_pid, backend.mem_path)
    if mapped is not None and (mine.st_dev, mine.st_ino) not in mapped:
        raise VmRefused(f"QEMU maps an older file than {ram_file} (it was replaced after QEMU "
                        f"started?): write the RAM file in place, never rename over it")
    others = [m["id"] for m in qmp.execute("query-memdev")
              if m.get("share") and m["id"] != backend.id]
    if others:
        raise VmRefused(f"the VM has other share=on memory ({', '.join(others)}): "
                        f"x-ignore-shared would leave it out and it would be lost")
    return backend


def _stat(path: Path, what: str) -> os.stat_result:
    try:
        result = os.stat(path)
    except OSError as e:
        raise VmRefused(f"cannot stat {what} {path}: {e.strerror}") from None
    if not os.path.isfile(path):
        raise VmRefused(f"{what} {path} is not a regular file (a mem-path directory means an "
                        f"unlinked file nobody else can reach)")
    return result


def _mapped_files(pid: int, mem_path: str | None) -> set[tuple[int, int]] | None:
    """(st_dev, st_ino) of QEMU's shared mappings named mem_path, from /proc/PID/maps;
    None if we may not read them (another user, another pid namespace).

    The path check alone misses a file renamed over mem-path after QEMU mapped it: the
    name then leads to the new file while QEMU's guest runs on the old, unlinked one.
    """
    try:
        with open(f"/proc/{pid}/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return None
    found = set()
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "s" in fields[1]:
            path = fields[5].removesuffix(" (deleted)")
            if mem_path and os.path.basename(path) == os.path.basename(mem_path):
                major, minor = (int(part, 16) for part in fields[3].split(":"))
                found.add((os.makedev(major, minor), int(fields[4])))
    return found or None


def _qemu_side_path(qmp: QMP, mem_path: str | None) -> Path:
    path = Path(mem_path or "")
    if path.is_absolute():
        return path
    return Path(f"/proc/{qmp.peer_pid}/cwd") / path


# -- run state -----------------------------------------------------------------------

def run_state(qmp: QMP) -> str:
    """query-status "status": running, paused, prelaunch (-S), inmigrate, postmigrate..."""
    return qmp.execute("query-status")["status"]


def stop(qmp: QMP) -> None:
    """Pause the guest. QMP answers once every vCPU has stopped, so when this returns the
    guest writes no more RAM: the engine's last dirty scan may follow at once."""
    qmp.execute("stop")


def cont(qmp: QMP) -> None:
    """Resume the guest. Works from paused and from postmigrate (it takes the disks back
    from the would-be destination). On a QEMU still in inmigrate it only arms autostart."""
    qmp.execute("cont")


def expect_source(qmp: QMP) -> str:
    """Refuse a VM that cannot be a source now: a waiting destination, one that already
    migrated away, or one with a migration under way. Returns the run state."""
    state = run_state(qmp)
    if state not in SOURCE_STATES:
        hint = {"inmigrate": "it is a destination waiting for an incoming migration",
                "postmigrate": "it already migrated away; 'cont' it to use it again"}
        raise VmRefused(f"the VM cannot be migrated now: it is {state}"
                        f"{': ' + hint[state] if state in hint else ''}")
    migration = qmp.execute("query-migrate").get("status")
    if migration in ("setup", "active", "device", "pre-switchover", "cancelling"):
        raise VmRefused(f"the VM has a migration under way (status {migration})")
    return state


def expect_incoming(qmp: QMP) -> None:
    """Refuse a destination that is not waiting with `-incoming defer` and no load yet.

    A QEMU started with -incoming URI (not defer) is also "inmigrate", but already
    listening: its query-migrate shows "socket-address" (or a status) where a deferred
    one that was not given migrate-incoming yet shows nothing at all.
    """
    state = run_state(qmp)
    if state != "inmigrate":
        raise VmRefused(f"the destination QEMU is not waiting for an incoming migration "
                        f"(it is {state}): start it with -incoming defer")
    migration = qmp.execute("query-migrate")
    if migration:
        where = migration.get("status") or "listening on its -incoming address"
        raise VmRefused(f"the destination QEMU is already receiving a migration ({where}): "
                        f"start it with -incoming defer")


def enable_ignore_shared(qmp: QMP) -> dict[str, bool]:
    """Turn on x-ignore-shared (both ends need it) and MIGRATION events (they end our waits
    without polling), read them back (a setting QEMU ignored fails here), and return the
    previous states for restore_capabilities().

    Restore them when done: a VM left with x-ignore-shared on would leave its RAM out of
    its next ordinary migration too (that destination then refuses the stream).
    """
    wanted = {IGNORE_SHARED: True, "events": True}
    before = _capabilities(qmp)
    try:
        _set_capabilities(qmp, wanted)
    except CommandFailed as e:
        raise VmRefused(f"cannot set {IGNORE_SHARED}: {e.desc}") from None
    now = _capabilities(qmp)
    if any(now.get(name) != state for name, state in wanted.items()):
        raise VmRefused(f"QEMU did not keep capability {IGNORE_SHARED} (this QEMU has: "
                        f"{', '.join(sorted(now))})")
    return {name: before.get(name, False) for name in wanted}


def restore_capabilities(qmp: QMP, previous: dict[str, bool]) -> None:
    """Set capabilities back (not possible while a migration runs: QEMU refuses)."""
    _set_capabilities(qmp, previous)


def _capabilities(qmp: QMP) -> dict[str, bool]:
    return {c["capability"]: c["state"] for c in qmp.execute("query-migrate-capabilities")}


def _set_capabilities(qmp: QMP, states: dict[str, bool]) -> None:
    qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": name, "state": state} for name, state in states.items()]})


# -- device state --------------------------------------------------------------------

def save_device_state(qmp: QMP, path: str | os.PathLike, *,
                      timeout: float = SAVE_TIMEOUT_S) -> MigrationResult:
    """Save the device state (no shared RAM) of a STOPPED VM into the file `path`.

    Leaves the source in postmigrate: paused, disks inactivated for the destination; `cont`
    brings it back. The file is written by QEMU through a descriptor we opened, so its
    size once this returns is the whole stream.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        return _save_to_fd(qmp, fd, timeout)
    finally:
        os.close(fd)


def save_device_state_bytes(qmp: QMP, *, timeout: float = SAVE_TIMEOUT_S) -> bytes:
    """As save_device_state, into memory (an anonymous memfd): no file to clean up."""
    fd = os.memfd_create("qemu-device-state", os.MFD_CLOEXEC)
    try:
        _save_to_fd(qmp, fd, timeout)
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _save_to_fd(qmp: QMP, fd: int, timeout: float) -> MigrationResult:
    if run_state(qmp) not in ("paused", "prelaunch"):
        raise DeviceStateFailed("the VM must be stopped before its device state is saved")
    bandwidth = qmp.execute("query-migrate-parameters").get("max-bandwidth")
    qmp.execute("migrate-set-parameters", {"max-bandwidth": SAVE_BANDWIDTH})
    try:
        start = _migrate_over_fd(qmp, fd, "migrate", "QEMU would not save its device state")
        try:
            result = wait_migration(qmp, timeout, start)
        except QMPTimeout:
            qmp.execute("migrate_cancel")  # leave the source able to run again
            raise DeviceStateFailed(f"saving the device state took over {timeout:g} s; "
                                    f"cancelled") from None
        if result.status != "completed":
            raise DeviceStateFailed(f"saving the device state {result.status}: "
                                    f"{result.info.get('error-desc', 'no reason given')}")
        # 7.2 reports "completed" a moment before its migration thread leaves
        # finish-migrate; until then `cont` fails ("Migration is not finalized yet"), so a
        # resume after a later failure would too. Return once the source is postmigrate.
        while run_state(qmp) == "finish-migrate":
            if time.monotonic() > start + timeout:
                raise QMPTimeout("the source stayed in finish-migrate after its save completed")
            time.sleep(0.0005)
        return result
    finally:
        if bandwidth is not None:
            try:
                qmp.execute("migrate-set-parameters", {"max-bandwidth": bandwidth})
            except QMPError:
                pass  # must not hide why the save failed


def load_device_state(qmp: QMP, state: str | os.PathLike | bytes, *,
                      timeout: float = LOAD_TIMEOUT_S) -> MigrationResult:
    """Load device state (a file or bytes) into a destination waiting with -incoming defer.

    Only once per QEMU process: 7.2 refuses a second migrate-incoming. When the load
    fails, QEMU 7.2 EXITS (status 1, the reason on its stderr), so a failure shows as the
    connection closing; the RAM file is left as it was. On success the guest is paused if
    the source was paused when it saved (it was) or QEMU ran with -S: call start_guest().
    """
    if isinstance(state, (bytes, bytearray, memoryview)):
        fd = os.memfd_create("qemu-device-state", os.MFD_CLOEXEC)
        with memoryview(state) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        os.lseek(fd, 0, os.SEEK_SET)  # QEMU reads from our (shared) file offset
    else:
        fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:
        start = _migrate_over_fd(qmp, fd, "migrate-incoming",
                                 "the destination QEMU would not load")
        try:
            result = wait_migration(qmp, timeout, start)
        except QMPConnectionLost:
            raise DeviceStateFailed("the destination QEMU exited while loading the device "
                                    "state (QEMU 7.2 quits when a load fails; its stderr "
                                    "says why)") from None
    finally:
        os.close(fd)
    if result.status != "completed":
        raise DeviceStateFailed(f"loading the device state {result.status}: "
                                f"{result.info.get('error-desc', 'no reason given')}")
    return result


def start_guest(qmp: QMP) -> str:
    """Run the guest on a destination that loaded its device state; returns the state.

    After the load QEMU is "paused" (the source was stopped when it saved, and QEMU
    restores that state even without -S) or, had the source been running, already
    "running". A QEMU still in inmigrate is refused: `cont` there would only arm
    autostart, and the guest would start by itself when some load completes.
    """
    state = run_state(qmp)
    if state == "inmigrate":
        raise DeviceStateFailed("the destination has not loaded its device state yet")
    if state != "running":
        cont(qmp)
        state = run_state(qmp)
    return state


def quit_qemu(qmp: QMP) -> None:
    """Ask QEMU to exit (e.g. a destination whose RAM failed to verify)."""
    try:
        qmp.execute("quit")
    except QMPConnectionLost:
        pass  # it may close before its answer reaches us


def wait_migration(qmp: QMP, timeout: float, start: float | None = None) -> MigrationResult:
    """Wait until query-migrate reports completed, failed or cancelled.

    Woken by MIGRATION events (capability "events"), with a query every POLL_S as a
    fallback. Raises QMPTimeout after `timeout` s (the migration goes on).
    """
    start = time.monotonic() if start is None else start
    deadline = start + timeout
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status", "none")
        if status in _MIGRATION_DONE:
            return MigrationResult(status=status, seconds=time.monotonic() - start, info=info)
        if time.monotonic() >= deadline:
            raise QMPTimeout(f"the migration is still {status} after {timeout:g} s")
        qmp.wait_event("MIGRATION", timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))


def _migrate_over_fd(qmp: QMP, fd: int, command: str, refusal: str) -> float:
    """Hand QEMU `fd` and run `command` (migrate, migrate-incoming) on it; returns when it
    started (monotonic), for wait_migration."""
    start = time.monotonic()
    qmp.execute("getfd", {"fdname": _FD_NAME}, fds=[fd])
    try:
        qmp.execute(command, {"uri": f"fd:{_FD_NAME}"})
    except CommandFailed as e:
        _close_fd(qmp)
        raise DeviceStateFailed(f"{refusal}: {e.desc}") from None
    return start


def _close_fd(qmp: QMP) -> None:
    try:
        qmp.execute("closefd", {"fdname": _FD_NAME})
    except QMPError:
        pass


# -- the two ends, as the engine drives them ------------------------------------------

class SourceVM:
    """The VM being migrated: checked when opened, paused at switchover, resumed on failure.

    pause() and resume() have the contract of the engine's other pause sources: pause
    returns once the guest stopped writing; resume is safe to call in any error path.
    """

    def __init__(self, qmp_socket: str | os.PathLike, ram_file: str | os.PathLike) -> None:
        self.qmp = QMP(qmp_socket)
        try:
            self.backend = check_ram_file(self.qmp, ram_file)
            expect_source(self.qmp)
            self._previous = enable_ignore_shared(self.qmp)
        except BaseException:
            self.qmp.close()
            raise

    def pause(self) -> None:
        stop(self.qmp)

    def resume(self) -> None:
        """cont, from paused or postmigrate. A QEMU that is gone has nothing to resume."""
        try:
            cont(self.qmp)
        except QMPConnectionLost:
            pass

    def save_device_state(self) -> bytes:
        return save_device_state_bytes(self.qmp)

    def state(self) -> str:
        return run_state(self.qmp)

    def close(self) -> None:
        """Put the capabilities back as they were, then disconnect (QEMU runs on)."""
        _restore_quietly(self.qmp, self._previous)
        self.qmp.close()

    def __enter__(self) -> SourceVM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class DestinationVM:
    """A QEMU waiting with -incoming defer on the RAM file the engine writes.

    Nothing runs there until start(): QEMU leaves the RAM file alone while it waits
    (ROM loads are skipped while incoming), so it may be started before the transfer.
    If the transfer fails, leave it waiting (the default; abandon()) or quit it.
    """

    def __init__(self, qmp_socket: str | os.PathLike, ram_file: str | os.PathLike) -> None:
        self.qmp = QMP(qmp_socket)
        try:
            self.backend = check_ram_file(self.qmp, ram_file)
            expect_incoming(self.qmp)
            self._previous = enable_ignore_shared(self.qmp)
        except BaseException:
            self.qmp.close()
            raise

    def start(self, device_state: str | os.PathLike | bytes) -> str:
        """Load the verified device state and run the guest; returns the run state."""
        load_device_state(self.qmp, device_state)
        return start_guest(self.qmp)

    def abandon(self, quit: bool = False) -> None:
        """The transfer failed: never load. Waiting (quit=False) keeps the QEMU usable for
        another attempt; quit=True ends it."""
        if quit:
            quit_qemu(self.qmp)
        self.close()

    def state(self) -> str:
        return run_state(self.qmp)

    def close(self) -> None:
        """Put the capabilities back once the guest runs (x-ignore-shared must stay on
        while the QEMU still waits to load), then disconnect."""
        try:
            if run_state(self.qmp) != "inmigrate":
                _restore_quietly(self.qmp, self._previous)
        except QMPError:
            pass
        self.qmp.close()

    def __enter__(self) -> DestinationVM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _restore_quietly(qmp: QMP, previous: dict[str, bool]) -> None:
    # Called on the way out, often after a failure: it must not hide that failure.
    try:
        restore_capabilities(qmp, previous)
    except QMPError:
        pass
