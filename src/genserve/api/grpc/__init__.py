"""The gRPC door (grpc.aio): the pipeline services, drawthings.ImageGenerationService, health and
reflection, on one server."""
