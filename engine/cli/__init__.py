"""The command line (`multifd`, `python -m engine`): commands, progress, the summary table, the
demo.
"""
