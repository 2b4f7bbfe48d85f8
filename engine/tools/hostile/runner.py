"""Runs hostile cases against a receiver and judges what it did; `python -m engine.hostile`."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from engine.errors import EngineError, UsageError
from engine.settings import PAGE_SIZE
from engine.storage import digest
from engine.tools import hostile
from engine.tools.hostile.cases import CASES, Case, names_of
from engine.tools.hostile.wire import (FAIL_TIMEOUT_S, PAGE, REPLY_TIMEOUT_S, Session, Wire,
                                       decoded)
from engine.wire.framing import encode
from engine.wire.protocol import Ack, Complete, Fault, Heartbeat, Verdict, Welcome


@dataclass(frozen=True)
class Outcome:
    """What the receiver did with one case. `verdict` is "refused", "ignored", "failed
    cleanly" (as hoped for the case's kind) or "unexpected"."""

    case: str
    kind: str
    verdict: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.verdict != "unexpected"


# -- running cases ----------------------------------------------------------------------------

def run_waiting(wire: Wire, case_: Case) -> Outcome:
    stranger = wire.dealer()
    try:
        stranger.send_multipart(case_.build())
        reply = decoded(stranger.recv_multipart()) if stranger.poll(REPLY_TIMEOUT_S * 1000) \
            else None
    finally:
        stranger.close()
    return _refusal(case_, reply)


def _refusal(case_: Case, reply: Any) -> Outcome:
    """A stranger's outcome: a FAULT back (refused), or silence (ignored)."""
    if isinstance(reply, Fault):
        return Outcome(case_.name, case_.kind, "refused", reply.message)
    if reply is None:
        return Outcome(case_.name, case_.kind, "ignored", "no answer")
    return Outcome(case_.name, case_.kind, "unexpected", f"answered {reply!r:.80}")


def run_strangers(wire: Wire, cases: Sequence[Case]) -> list[Outcome]:
    """Our legitimate two-channel transfer, attacked by each case, then finished: every
    refusal counts only if the transfer still verifies."""
    session = Session(wire, channels=2)
    welcome = session.open()
    if not isinstance(welcome, Welcome):
        raise EngineError(f"the receiver did not accept our legitimate transfer: {welcome!r:.80}")
    outcomes = []
    for case_ in cases:
        where, frames = case_.build(session)
        stranger = wire.dealer(None if where == "control" else welcome.ports[where])
        stranger.send_multipart(frames)
        reply = session.wait(stranger, REPLY_TIMEOUT_S)
        stranger.close()
        outcomes.append(_refusal(case_, reply))
    problem = _finish_legitimately(session)
    if problem:
        outcomes = [Outcome(o.case, o.kind, "unexpected", f"{o.detail}; but then {problem}")
                    for o in outcomes]
    return outcomes


def _finish_legitimately(session: Session) -> str:
    """Send our page and COMPLETE; '' if the receiver verified, else what went wrong."""
    session.data[0].send_multipart(session.page_packet())
    ack = session.wait(session.data[0], FAIL_TIMEOUT_S)
    if not isinstance(ack, Ack):
        return f"our packet got {ack!r:.80} instead of an ACK"
    page_digest = digest.fold_digest(PAGE_SIZE, np.array([digest.page_hash(PAGE)], np.uint64))
    session.control.send(encode(Complete(digest=page_digest, devices={}, rounds=0)))
    verdict = session.wait(session.control, FAIL_TIMEOUT_S)
    if not (isinstance(verdict, Verdict) and verdict.ok):
        return f"our transfer ended with {verdict!r:.120}"
    return ""


def run_sender(wire: Wire, case_: Case) -> Outcome:
    """We are the sender and send the case's messages on channel 0: the receiver should
    fail the transfer with a FAULT on control."""
    session = Session(wire, **case_.session)
    try:
        reply = session.open()
        if isinstance(reply, Welcome):
            for frames in case_.build(session):
                session.data[0].send_multipart(frames)
            session.wait(session.data[0], FAIL_TIMEOUT_S, skip=(Heartbeat, Ack))
            if session.control_fault is None:
                session.wait(session.control, FAIL_TIMEOUT_S)
            reply = session.control_fault
        if isinstance(reply, Fault):
            return Outcome(case_.name, case_.kind, "failed cleanly", reply.message)
        return Outcome(case_.name, case_.kind, "unexpected", f"answered {reply!r:.80}")
    finally:
        session.close()


def run(target: str, names: Sequence[str]) -> list[Outcome]:
    """Run the named cases against the receiver at `target` (see the module docstring)."""
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise UsageError(f"unknown case {unknown[0]!r}; known: {', '.join(CASES)}")
    chosen = [CASES[n] for n in names]
    senders = [c for c in chosen if c.kind == "sender"]
    if senders and len(chosen) > 1:
        raise UsageError("a 'sender' case ends the receiver's transfer: run it alone, one per "
                         "receiver")
    wire = Wire(target)
    try:
        outcomes = [run_waiting(wire, c) for c in chosen if c.kind == "waiting"]
        strangers = [c for c in chosen if c.kind == "stranger"]
        if strangers:
            outcomes += run_strangers(wire, strangers)
        outcomes += [run_sender(wire, c) for c in senders]
        return outcomes
    finally:
        wire.close()



# -- command line -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.hostile", description=hostile.__doc__.split("\n\n")[0],
        epilog="cases: " + ", ".join(f"{c.name} ({c.kind})" for c in CASES.values()))
    parser.add_argument("--target", required=True, metavar="tcp://HOST:PORT",
                        help="the receiver's --listen endpoint")
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="a case to run (repeatable; default: every waiting and stranger "
                        "case)")
    parser.add_argument("--json", action="store_true", help="one JSON line per case")
    args = parser.parse_args(argv)
    try:
        outcomes = run(args.target, args.case or names_of("waiting") + names_of("stranger"))
    except EngineError as exc:
        print(f"multifd hostile: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for outcome in outcomes:
        if args.json:
            print(json.dumps(outcome.__dict__))
        else:
            print(f"{outcome.case:32} {outcome.verdict:15} {outcome.detail}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

