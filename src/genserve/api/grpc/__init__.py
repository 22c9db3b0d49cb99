"""The gRPC door (grpc.aio): the pipeline services, drawthings.ImageGenerationService and
monolithic.MonolithicService (lip-sync) on one server with health and reflection; gen/ holds the
code generated from protos/ (``make protos``). Imports what every door may, and rpc/ for the
server builder and the abort helper.
"""
