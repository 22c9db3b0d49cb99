"""The Kafka door: one consumer group per service, answers published to response topics, a shared
answers topic so a redelivered request is answered, not recomputed. Imports engine, services, storage.
"""
