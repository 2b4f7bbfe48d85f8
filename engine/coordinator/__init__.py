"""The two coordinators (`Sender` in sender.py, `Receiver` in receiver.py) and what they are
made of: the source's dispatcher, the control link, worker processes, in-flight replay, the
barrier, partitioning, device assembly, the final round, results, and `migrate` (both ends in
one process, local.py).
"""
