"""The ``edge ota`` and ``edge rollout`` commands against a real nats-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from edge.cli.main import main
from edge.cli.ota import progress_bar
from edge.ota import hub, repo as fleet

from support import component

pytestmark = pytest.mark.timeout(60)


def run(*argv: str) -> int:
    return main(list(argv))


def test_keygen_publish_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(tmp_path / "fleet")
    assert run("ota", "keygen", "--repo", repo, "--threshold", "targets=2") == 0
    assert len(list((tmp_path / "fleet" / "keys").glob("targets-*.pem"))) == 2
    assert oct((tmp_path / "fleet" / "keys" / "root-0.pem").stat().st_mode & 0o777) == "0o600"
    assert run("ota", "keygen", "--repo", repo) == 1  # never overwrites a repository's keys
    assert "refusing to overwrite" in capsys.readouterr().err
    manifest = component(tmp_path / "src", "blink", "1.0.0")
    assert run("ota", "publish", str(manifest), "--version", "1.2.0", "--repo", repo) == 0
    targets = fleet.describe(repo)["targets"]
    assert targets["artifacts"] == ["component/blink/1.2.0.tar"] and targets["version"] == 2
    assert run("ota", "keygen", "--repo", str(tmp_path / "x"), "--threshold", "bogus=1") == 1
    assert "ROLE=N" in capsys.readouterr().err


async def test_upload_desire_and_rollout_status(tmp_path: Path, nc: Client, nats_url: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(tmp_path / "fleet")
    fleet.keygen(repo)
    from edge.cli.main import dispatch, build_parser

    async def arun(*argv: str) -> int:
        return await dispatch(build_parser().parse_args(list(argv)))

    assert await arun("ota", "upload", "--repo", repo, "--hub", nats_url) == 0
    assert "objects written" in capsys.readouterr().out
    assert await arun("ota", "desire", "dev9", "r5", "blink=1.0.0", "--hub", nats_url) == 0
    assert await hub.get_desired(nc.jetstream(), "dev9") == {"revision": "r5", "components": {"blink": "1.0.0"}}
    assert await arun("ota", "label", "dev9", "fleet=x", "--hub", nats_url) == 0
    # a rollout whose one device never reports: timed out, counted as failed, the rollout halts
    assert await arun("rollout", "start", "ro1", "blink=1.0.0", "--selector", "fleet=x", "--canary", "0",
                      "--device-timeout", "0.5", "--max-failure", "0", "--hub", nats_url) == 1
    capsys.readouterr()
    assert await arun("rollout", "status", "--json", "--hub", nats_url) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["status"] == "halted" and rec["devices"]["dev9"]["state"] == "timed_out"
    assert await arun("rollout", "status", "--hub", nats_url) == 0
    text = capsys.readouterr().out
    assert "rollout ro1: halted" in text and "dev9" in text and "timed_out" in text


def test_progress_bar() -> None:
    assert progress_bar({"committed": 1, "failed": 1}, 4, width=8) == "[##xx....]"


def test_publish_config_and_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(tmp_path / "fleet")
    assert run("ota", "keygen", "--repo", repo) == 0
    frag = tmp_path / "limits.toml"
    frag.write_text("[safety]\nceiling = 40.0\n")
    assert run("ota", "publish-config", str(frag), "--version", "1.0.0", "--repo", repo) == 0
    pol = tmp_path / "fleet.toml"
    pol.write_text('[[rule]]\nname = "r1"\neffect = "deny"\nprincipal = "*"\naction = "command"\n')
    assert run("ota", "publish-policy", str(pol), "--name", "base", "--version", "2.0.0", "--repo", repo) == 0
    assert fleet.describe(repo)["targets"]["artifacts"] == ["config/limits/1.0.0.tar", "policy/base/2.0.0.tar"]
    capsys.readouterr()
    frag.write_text('[hub]\nurl = "nats://elsewhere:7422"\n')  # a fragment may not move the hub link
    assert run("ota", "publish-config", str(frag), "--version", "2.0.0", "--repo", repo) == 1
    assert "may not set section 'hub'" in capsys.readouterr().err
    pol.write_text('[[rule]]\nname = "r1"\neffect = "maybe"\n')
    assert run("ota", "publish-policy", str(pol), "--version", "3.0.0", "--repo", repo) == 1
    assert "rule 'r1'" in capsys.readouterr().err
    assert len(fleet.describe(repo)["targets"]["artifacts"]) == 2  # nothing signed
