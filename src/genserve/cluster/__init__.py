"""The LLM cluster (titancompute.v1): a coordinator that routes and signs, agents that stream.

coordinator.py (CoordinatorService), agent.py (AgentService), agent_link.py (registration and the
health stream), agent_runner.py (the agent process), auth.py (RS256 tokens), routing.py (the score),
machine.py (RAM/VRAM/CPU figures), transport.py (TLS, the agent's channel). A door: imports the
engine, services, models, config, rpc/ and the generated titancompute code in api/grpc/gen (the one
written exception); never another door.
"""
