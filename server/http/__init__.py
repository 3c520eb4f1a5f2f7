"""The v2 REST adapter (KServe v2 HTTP/REST with Triton's extensions) over the same core as gRPC."""
