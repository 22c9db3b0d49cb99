"""The ``engine`` section: devices, their executor threads and queue limits."""

from __future__ import annotations

from pydantic import Field

from genserve.config.base import Section


class EngineSettings(Section):
    queue_size: int = Field(64, ge=1, description="Requests waiting per device before new ones are refused.")
    workers_per_device: int = Field(1, ge=1, description="Executor threads per device.")
    devices: list[str] = Field(
        default_factory=list,
        description="Devices that run requests, e.g. [cpu] or ['cuda:0', 'cuda:1']; "
        "empty = models.default_device. A request goes to the least busy one.",
    )
    device_workers: dict[str, int] = Field(
        default_factory=dict,
        description="Executor threads for named devices, overriding workers_per_device, e.g. {'cuda:0': 2}.",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads on CPU; 0 = torch's default.")
