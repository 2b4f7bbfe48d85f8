"""Live migration: pre-copy rounds over a Sender (rounds.py), dirty-page trackers (dirty.py),
pausing the source (pause.py).
"""
