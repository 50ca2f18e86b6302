"""Record a demo window for the retrieval evaluation: the EVT stream of a stopped device.

    .venv/bin/python -m edge.cli.main run --data-dir /tmp/demo --quiet    # let it run, then Ctrl-C
    .venv/bin/python tests/language/eval/record.py /tmp/demo demo > tests/language/eval/demo_window.json

Writes ``[{seq, t, subject, data}]`` (``data`` as text) of every EVT message except detections.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import nats

from edge.nats.server import NatsServer
from edge.sync.device.leaf import device_server_options


async def main(data_dir: Path, device: str) -> None:
    server = NatsServer(device_server_options(device, data_dir / "nats", None))
    await server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("EVT")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("EVT", seq)
            if msg.subject is None or msg.subject.endswith(".detection"):
                continue
            out.append({"seq": seq, "t": msg.time.timestamp() if getattr(msg, "time", None) else 0.0,
                        "subject": msg.subject.replace(f"edge.{device}.", "edge.{device}.", 1),
                        "data": (msg.data or b"").decode()})
        json.dump(out, sys.stdout, indent=0)
    finally:
        await nc.close()
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
