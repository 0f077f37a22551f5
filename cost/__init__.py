"""Hardware profiles, latency and memory models."""
