"""The ``kafka`` section: the Kafka door's brokers, topics, group and delivery tuning."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from genserve.config.base import Section


class KafkaSettings(Section):
    """The Kafka door: one consumer per service in the group ``<service>-group``."""

    enabled: bool = Field(False, description="Start the Kafka door with `genserve serve`.")
    bootstrap_servers: list[str] = Field(default_factory=list, description="Brokers, e.g. ['kafka:9092'].")
    services: list[str] = Field(
        default_factory=lambda: ["latent_encoder", "text_encoder", "sampling", "decoding", "edit"],
        description="Services this worker consumes requests for.",
    )
    request_topics: dict[str, str] = Field(
        default_factory=dict, description="Request topic per service; default <service-with-dashes>-requests."
    )
    response_topics: dict[str, str] = Field(
        default_factory=dict,
        description="Response topic per service when a message names none; default <service>-responses.",
    )
    group_prefix: str = Field("", description="Prepended to every consumer group (<prefix><service>-group).")
    max_in_flight: int = Field(4, ge=1, le=1024, description="Messages a worker works on at once.")
    session_timeout_s: float = Field(
        10.0, gt=0, description="A worker silent this long is dead; its work moves."
    )
    rebalance_timeout_s: float = Field(60.0, gt=0, description="How long a rebalance waits for held work.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of the topics the door creates.")
    fetch_max_wait_s: float = Field(0.1, gt=0, le=10, description="Longest a fetch waits at the broker.")
    responses_keep_s: float = Field(
        7 * 24 * 3600,
        gt=0,
        description="Answers older than this are forgotten: pruned from responses_db at start, skipped when "
        "reading answers_topic, and its retention when the door creates it.",
    )
    responses_db: Path = Field(
        Path("data/kafka-responses.sqlite"),
        description="This host's copy of answers_topic (SQLite), where a redelivered request id is looked "
        "up, so that it is answered again, not recomputed.",
    )
    answers_topic: str = Field(
        "genserve-answers",
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="Compacted topic of every answer, keyed <service>/<request_id>, shared by all workers on "
        "all hosts; one per deployment that shares a cluster.",
    )
