"""A device for the kill -9 test: runs a runtime with OTA until killed, writing what it runs.

argv: nats url, data dir, trusted root path. Writes ``<data>/boots.jsonl`` (one line per start:
the versions it came up running, before asking the hub anything) and ``<data>/live.json``
(every 50 ms: versions and the OTA status).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from edge.config import DeviceConfig, EntitySpec
from edge.ota.config import OtaConfig
from edge.runtime import Runtime


async def main(url: str, data: Path, root: Path) -> None:
    cfg = DeviceConfig(device="kill1", data_dir=data)
    cfg.nats.url = url
    cfg.entities.append(EntitySpec("e1", "drone", {}, {"position": {"x": 0.0}}))
    cfg.ota = OtaConfig(root=root, hub_domain="", poll_s=0.05, probation_s=0.6, max_boots=1000)
    rt = Runtime(cfg)
    await rt.start()
    running = {c["name"]: c["version"] for c in rt.components_status()}
    with open(data / "boots.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "running": running}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    while True:
        live = {"running": {c["name"]: c["version"] for c in rt.components_status()},
                "ota": rt.status()["ota"]}
        tmp = data / "live.tmp"
        tmp.write_text(json.dumps(live))
        tmp.replace(data / "live.json")
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
