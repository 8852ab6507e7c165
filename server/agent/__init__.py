"""The gpufleet agent: samples GPUs, spools batches on disk, delivers them to an ingest server."""
