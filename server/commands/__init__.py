"""Subcommands of ``gpufleet``: each module has HELP, add_arguments(parser) and run(args) -> int.

A command module imports what it needs inside ``run`` so that choosing one
subcommand loads only its own side (``serve`` and ``status`` never load textual).
"""
