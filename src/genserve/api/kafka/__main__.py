"""``python -m genserve.api.kafka``: the old way to start a Kafka worker, kept working.

Deprecated: ``genserve kafka-worker`` is the one entry point and takes the same flags. This
hands its arguments to it (as a new program, so the door never imports the command line).
"""

import os
import sys

print(
    "python -m genserve.api.kafka is deprecated; use `genserve kafka-worker` (same flags)",
    file=sys.stderr,
    flush=True,
)
args = sys.argv[1:]
config = []
if "--config" in args:  # the old flag is the command line's global option, given before the command
    at = args.index("--config")
    config, args = args[at : at + 2], args[:at] + args[at + 2 :]
os.execv(sys.executable, [sys.executable, "-m", "genserve.cli", *config, "kafka-worker", *args])
