"""`chexstack serve`: a TensorFlow Serving-compatible model server (REST + gRPC) in Python."""
