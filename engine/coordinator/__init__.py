"""The two coordinators (`Sender` in sender.py, `Receiver` in receiver.py) and what they are
made of: the control link, worker processes, in-flight replay, the barrier, partitioning,
pacing, device assembly, results, and `migrate` (both ends in one process, local.py).
"""
