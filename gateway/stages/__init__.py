"""The pipeline's stages, one concept per module; the order is in `gateway.pipeline`."""
