"""GPU backends: what a node's GPUs and their processes look like right now."""
