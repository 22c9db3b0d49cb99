"""The LLM cluster's two processes: ``genserve coordinator`` and ``genserve agent``.

Each serves until SIGTERM or SIGINT, then stops with a short grace (health streams are
long-lived). The agent builds the runtime its streams run on; the coordinator needs none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from genserve.cluster.coordinator import Coordinator
from genserve.cluster.transport import announce_stderr, until_signalled
from genserve.config import ClusterSettings, Settings


def run_coordinator(settings: ClusterSettings, announce: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""

    async def main() -> None:
        coordinator = Coordinator(settings)
        address = await coordinator.start()
        scheme = "TLS" if settings.tls_cert_file else "plaintext"
        line = f"coordinator listening on {address} ({scheme}); key {settings.key_file}"
        (announce or announce_stderr)(line)
        await until_signalled()
        await coordinator.stop()

    asyncio.run(main())


def run_agent(
    settings: Settings, coordinator: str | None, announce: Callable[[str], None] | None = None
) -> None:
    """Build the runtime (loads no model yet), serve, and stay registered until SIGTERM or SIGINT."""

    # torch and the models come in here only: the coordinator never imports them.
    from genserve.app.runtime import build_runtime
    from genserve.cluster.agent_runner import Agent, preload

    async def main() -> None:
        with build_runtime(settings) as runtime:
            await asyncio.to_thread(preload, runtime, settings.cluster.preload)
            agent = Agent(settings, runtime, coordinator)
            endpoint = await agent.start()
            models = ", ".join(agent.servicer.models()) if agent.servicer else ""
            line = f"agent {agent.agent_id} serving on {endpoint}; coordinator {agent.target}"
            (announce or announce_stderr)(f"{line}; models: {models or 'none'}")
            await until_signalled()
            await agent.stop()

    asyncio.run(main())
