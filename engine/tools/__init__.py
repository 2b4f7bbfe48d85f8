"""Tools beside the engine: the load tester (`multifd bench`, bench/), the hostile-input
catalogue (`python -m engine.hostile`, hostile/) and the sample images they both use.
"""
