"""gpufleet's Textual console. Talks to servers only through server.client and server.schemas."""
