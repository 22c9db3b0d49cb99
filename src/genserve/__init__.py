"""genserve: one core serving generative models over REST, gRPC, Kafka, file-drop and more."""

__version__ = "0.1.0"
