"""A device started from a real config file, for config fragment and policy artifact tests: a
fleet repository, a real nats-server holding its store, the runtime built the way ``edge run``
builds it (:func:`edge.ota.fragments.load_device_config`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from edge.ota import hub, repo as fleet
from edge.ota.fragments import FRAGMENT, load_device_config, pack_file
from edge.ota.policies import POLICY_FILE
from edge.runtime import Runtime

from support import TRAP_CODE, component, ota_status, publish_component, wait_for

BASE_CEILING = 100.0


class SettingsRig:
    """One device (``dev1``) from ``device.toml``; the fleet repo in ``fleet/``."""

    def __init__(self, tmp: Path, nc: Client, url: str, *, probation_s: float = 0.3, max_boots: int = 3,
                 policy: str | None = None) -> None:
        self.tmp = tmp
        self.nc = nc
        self.js = nc.jetstream()
        self.url = url
        self.repo = tmp / "fleet"
        self.config = tmp / "device.toml"
        self.rt: Runtime | None = None
        self.events: list[dict[str, Any]] = []
        fleet.keygen(self.repo)
        for v, code in (("1.0.0", b"\x41\x00"), ("3.0.0", TRAP_CODE)):
            publish_component(self.repo, tmp, component(tmp / "src", "blink", v, code))
        policy_line = ""
        if policy is not None:
            (tmp / "local-policy.toml").write_text(policy)
            policy_line = '\n[policy]\nfile = "local-policy.toml"\nwatch_interval = 0.2\n'
        self.config.write_text(f'''[device]
id = "dev1"
data_dir = "data"

[nats]
url = "{url}"

[ota]
root = "fleet/metadata/1.root.json"
hub_domain = ""
poll_s = 0.2
probation_s = {probation_s}
max_boots = {max_boots}

[safety]
ceiling = {BASE_CEILING}

[[entities]]
id = "e1"
kind = "drone"
components = {{ position = {{ x = 0.0 }} }}
{policy_line}''')

    def fragment(self, name: str, version: str, text: str, *, checked: bool = True) -> None:
        """Sign a fragment (``checked``: through the CLI's packer, which refuses forbidden sections)."""
        path = self.tmp / f"{name}-{version}.toml"
        path.write_text(text)
        if checked:
            from edge.ota.fragments import pack_fragment

            data = pack_fragment(path)
        else:  # what a fleet tool without the check could sign: the device must refuse it itself
            data = pack_file(FRAGMENT, text.encode())
        fleet.publish(self.repo, data, kind="config", name=name, version=version)

    def policy(self, name: str, version: str, text: str, *, checked: bool = True) -> None:
        path = self.tmp / f"policy-{name}-{version}.toml"
        path.write_text(text)
        if checked:
            from edge.ota.policies import pack_policy

            data = pack_policy(path)
        else:
            data = pack_file(POLICY_FILE, text.encode())
        fleet.publish(self.repo, data, kind="policy", name=name, version=version)

    async def upload(self) -> None:
        await fleet.upload(self.js, self.repo)

    async def start(self) -> Runtime:
        async def on(msg: Any) -> None:
            self.events.append({"kind": msg.subject.rsplit(".", 1)[-1], **json.loads(msg.data)})

        if not self.events:
            await self.nc.subscribe("edge.dev1.evt.ota.>", cb=on)
        self.rt = Runtime(load_device_config(self.config))
        await self.rt.start()
        return self.rt

    async def stop(self) -> None:
        if self.rt is not None:
            await self.rt.stop()
            self.rt = None

    async def desire(self, revision: str, artifacts: dict[str, str], **extra: Any) -> None:
        doc = hub.desired_document(revision, artifacts) | extra
        await hub.put_desired(self.js, "dev1", doc)

    async def committed(self, revision: str, timeout: float = 20.0) -> None:
        rt = self.rt
        assert rt is not None
        await wait_for(lambda: ota_status(rt)["revision"] == revision and ota_status(rt)["probation"] is None,
                       timeout)
        # and on disk (the pointer is written off the event loop, just after)
        await wait_for(lambda: self.state()["revision"] == revision and self.state()["probation"] is None, timeout)

    def layer(self, name: str) -> Any:
        assert self.rt is not None and self.rt.layers is not None
        return next(layer for layer in self.rt.layers if layer.name == name)

    def ceiling(self) -> float | None:
        return self.layer("safety").config.defaults.ceiling  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.tmp / "data" / "ota" / "state.json").read_text()))
