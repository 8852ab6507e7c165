"""The described sample fleet (fleet.toml) and its telemetry generator (generate.py).

A package so that a plain (non-editable) ``pip install`` ships them beside
``server`` and ``console``: the simulated fleet and the demo data need both.
"""
