"""KServe v2 over gRPC (``inference.GRPCInferenceService``), served beside the HTTP API."""
