"""Hostile and broken input for a receiver: a catalogue of named cases over raw ZeroMQ.

    python -m engine.hostile --target tcp://HOST:PORT [--case NAME]... [--json]

Point it at a receiver of your own (`multifd receive ... --listen tcp://HOST:PORT`) to see
how it treats a peer that breaks the wire rules. Cases come in three kinds, by who attacks:

- "waiting": a stranger talks to the control endpoint of a receiver that still waits for its
  sender. The receiver answers FAULT (or ignores the message) and keeps waiting.
- "stranger": we open a legitimate transfer of a one-page image ourselves (HELLO, INIT on
  every channel), then other identities attack its control endpoint and data ports. Each is
  refused; afterwards our transfer must still be served to the end and verify.
- "sender": we are the receiver's sender and send something broken ourselves. The receiver
  refuses it and fails the transfer cleanly (a FAULT back, exit code 1): it serves one
  sender, and a sender that breaks the rules has nothing left worth finishing.

A "sender" case ends the receiver's transfer, so it runs alone; otherwise the "waiting"
cases run first, then the "stranger" cases inside one legitimate transfer.
"""
