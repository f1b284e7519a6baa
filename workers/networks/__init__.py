"""The networks toolkit: the OFA MobileNetV3 arch space and its subnets, weights files,
the fine-tuning loop, measurements (FLOPs, latency, functional embedding), image decoding,
and export. Used by the worker's job, by search and by the public API."""
