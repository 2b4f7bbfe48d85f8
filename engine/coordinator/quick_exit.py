"""Imported by the worker forkserver only (forkserver.PRELOAD), for its side effect: once its
coordinator lets it go, the forkserver ends at once instead of tearing its interpreter down
(numpy, zmq and zstandard unloaded one by one), which every command waited for on its way out.

Its workers are not touched: each ends with os._exit already, as multiprocessing's children do.
"""
import atexit
import os

atexit.register(os._exit, 0)
