"""gRPC adapters: the inference servicer, health, reflection and the error boundary."""
