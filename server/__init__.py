"""gpufleet's node and collector side: schemas, GPU backends, HTTP server, store, agent, SDK.

Nothing under this package imports textual.
"""

__version__ = "0.1.0"
