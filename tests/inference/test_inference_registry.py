"""ModelRegistry: files, object store with digests, replacement that keeps serving, hot reload."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client
from nats.js import api
from tflite_modelgen import float_fc

from edge.errors import ConfigError
from edge.inference.backend import Backend
from edge.inference.errors import InferenceError
from edge.inference.registry import (
    DIGEST_HEADER,
    ModelRegistry,
    ModelSpec,
    parse_model_specs,
    wait_for_model,
)

pytestmark = pytest.mark.timeout(30)

X = np.array([[1.0, 2.0, -1.0, 0.5]], np.float32)


def fc(scale: float) -> tuple[bytes, np.ndarray]:
    """A float FC model and its expected output for X."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4) * scale
    b = np.array([0.0, 1.0, -1.0], np.float32)
    return float_fc(w, b), X @ w.T + b


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
async def registry(backend: Backend, nc: Client) -> Any:
    reg = ModelRegistry(js=nc.jetstream(), backend=backend, fetch_timeout=2.0)
    yield reg
    await reg.close()


@pytest.fixture
async def store(nc: Client) -> Any:
    return await nc.jetstream().create_object_store("models")


async def put(store: Any, name: str, data: bytes, digest: str | None = None) -> None:
    headers = {DIGEST_HEADER: digest} if digest else None
    await store.put(name, data, meta=api.ObjectMeta(name=name, headers=headers))


# -- files ----------------------------------------------------------------------------------------


async def test_file_model_infer_and_status(registry: ModelRegistry, tmp_path: Path) -> None:
    content, expected = fc(0.1)
    p = tmp_path / "a.tflite"
    p.write_bytes(content)
    await registry.load(ModelSpec(name="a", path=str(p), sha256=sha(content), threads=2))
    for _ in range(5):
        (y,) = await registry.infer("a", [X])
        np.testing.assert_allclose(y, expected, rtol=1e-5)
    st = registry.status()["a"]
    assert st.state == "serving" and st.backend is not None and st.backend.startswith("litert ")
    assert st.source == str(p) and st.sha256 == sha(content) and st.threads == 2
    assert st.invocations == 5 and st.errors == 0 and st.loads == 1
    assert st.p50_ms is not None and st.p99_ms is not None and st.p99_ms >= st.p50_ms
    assert st.to_dict()["name"] == "a"
    assert registry.names() == ["a"]


async def test_file_digest_mismatch_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    content, _ = fc(0.1)
    p = tmp_path / "a.tflite"
    p.write_bytes(content)
    with pytest.raises(InferenceError) as ei:
        await registry.load(ModelSpec(name="a", path=str(p), sha256="0" * 64))
    assert ei.value.reason == "digest" and ei.value.got == sha(content)
    st = registry.status()["a"]
    assert st.state == "failed" and st.load_errors == 1 and "does not match" in (
        st.last_load_error or "")
    with pytest.raises(InferenceError) as ei:
        await registry.infer("a", [X])
    assert ei.value.reason == "unknown-model"


async def test_missing_file(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(InferenceError) as ei:
        await registry.load(ModelSpec(name="a", path=str(tmp_path / "nope.tflite")))
    assert ei.value.reason == "load" and "cannot read" in str(ei.value)


async def test_failed_replacement_keeps_previous_serving(registry: ModelRegistry,
                                                         tmp_path: Path) -> None:
    good, expected = fc(0.1)
    p = tmp_path / "a.tflite"
    p.write_bytes(good)
    await registry.load(ModelSpec(name="a", path=str(p)))
    p.write_bytes(b"corrupt" * 100)
    with pytest.raises(InferenceError) as ei:
        await registry.load(ModelSpec(name="a", path=str(p)))
    assert ei.value.reason == "load"
    (y,) = await registry.infer("a", [X])
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    st = registry.status()["a"]
    assert st.state == "serving" and st.sha256 == sha(good)
    assert st.loads == 1 and st.load_errors == 1


async def test_replacement_swaps_and_inflight_invokes_finish(registry: ModelRegistry,
                                                             tmp_path: Path) -> None:
    v1, e1 = fc(0.1)
    v2, e2 = fc(-0.3)
    p1, p2 = tmp_path / "v1.tflite", tmp_path / "v2.tflite"
    p1.write_bytes(v1)
    p2.write_bytes(v2)
    await registry.load(ModelSpec(name="a", path=str(p1)))
    inflight = [asyncio.create_task(registry.infer("a", [X])) for _ in range(20)]
    await asyncio.sleep(0)
    await registry.load(ModelSpec(name="a", path=str(p2)))
    for r in await asyncio.wait_for(asyncio.gather(*inflight), 5):
        np.testing.assert_allclose(r[0], e1, rtol=1e-5)
    (y,) = await registry.infer("a", {"input": X})
    np.testing.assert_allclose(y, e2, rtol=1e-5)
    assert registry.status()["a"].loads == 2


async def test_infer_input_errors_count(registry: ModelRegistry, tmp_path: Path) -> None:
    content, _ = fc(0.1)
    p = tmp_path / "a.tflite"
    p.write_bytes(content)
    await registry.load(ModelSpec(name="a", path=str(p)))
    with pytest.raises(InferenceError) as ei:
        await registry.infer("a", [X.astype(np.float64)])
    assert ei.value.reason == "dtype"
    assert registry.status()["a"].errors == 1
    await registry.remove("a")
    assert registry.names() == []


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_relative_model_path_is_relative_to_the_config_file(
        registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.config import load_config

    content, expected = fc(0.1)
    (tmp_path / "dev" / "models").mkdir(parents=True)
    (tmp_path / "dev" / "models" / "a.tflite").write_bytes(content)
    conf = tmp_path / "dev" / "device.toml"
    conf.write_text('[[models]]\nname = "a"\npath = "models/a.tflite"\n')
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")  # not where the config is
    (spec,) = load_config(conf).models
    assert spec.path == str(tmp_path / "dev" / "models" / "a.tflite")
    await registry.load(spec)
    (y,) = await registry.infer("a", [X])
    np.testing.assert_allclose(y, expected, rtol=1e-5)


# -- object store ---------------------------------------------------------------------------------


async def test_object_model_with_header_digest(registry: ModelRegistry, store: Any) -> None:
    content, expected = fc(0.2)
    await put(store, "fc.tflite", content, sha(content))
    await registry.load(ModelSpec(name="fc", object="fc.tflite"))
    (y,) = await registry.infer("fc", [X])
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    assert registry.status()["fc"].source == "object://models/fc.tflite"


async def test_object_header_digest_mismatch_keeps_old(registry: ModelRegistry,
                                                       store: Any) -> None:
    v1, e1 = fc(0.2)
    v2, _ = fc(0.5)
    await put(store, "fc.tflite", v1, sha(v1))
    await registry.load(ModelSpec(name="fc", object="fc.tflite"))
    await put(store, "fc.tflite", v2, sha(v1))  # publisher declared the wrong digest
    with pytest.raises(InferenceError) as ei:
        await registry.load(ModelSpec(name="fc", object="fc.tflite"))
    assert ei.value.reason == "digest" and "header Edge-Sha256" in str(ei.value)
    assert ei.value.expected == sha(v1) and ei.value.got == sha(v2)
    (y,) = await registry.infer("fc", [X])
    np.testing.assert_allclose(y, e1, rtol=1e-5)


async def test_object_config_digest_wins_over_header(registry: ModelRegistry,
                                                     store: Any) -> None:
    v1, _ = fc(0.2)
    await put(store, "fc.tflite", v1, sha(v1))
    with pytest.raises(InferenceError) as ei:
        await registry.load(ModelSpec(name="fc", object="fc.tflite", sha256="ab" * 32))
    assert ei.value.reason == "digest" and "config sha256" in str(ei.value)
    await registry.load(ModelSpec(name="fc", object="fc.tflite", sha256=sha(v1)))
    assert registry.status()["fc"].state == "serving"


async def test_object_without_declared_digest_uses_store_digest(registry: ModelRegistry,
                                                                store: Any) -> None:
    v1, e1 = fc(0.2)
    await put(store, "fc.tflite", v1)
    await registry.load(ModelSpec(name="fc", object="fc.tflite"))
    np.testing.assert_allclose((await registry.infer("fc", [X]))[0], e1, rtol=1e-5)


async def test_object_missing_and_bucket_missing(registry: ModelRegistry, store: Any) -> None:
    with pytest.raises(InferenceError) as ei:
        await registry.load(ModelSpec(name="fc", object="nope.tflite"))
    assert ei.value.reason == "fetch" and "nope.tflite" in str(ei.value)
    with pytest.raises(InferenceError) as ei:
        await registry.load(ModelSpec(name="fc", object="x.tflite", bucket="nobucket"))
    assert ei.value.reason == "fetch" and "nobucket" in str(ei.value)
    with pytest.raises(InferenceError) as ei:
        await registry.watch("nobucket")
    assert ei.value.reason == "fetch"


async def test_object_without_jetstream(backend: Backend) -> None:
    reg = ModelRegistry(backend=backend)
    with pytest.raises(InferenceError) as ei:
        await reg.load(ModelSpec(name="fc", object="fc.tflite"))
    assert ei.value.reason == "no-jetstream"
    with pytest.raises(InferenceError):
        await reg.watch()
    await reg.close()


async def test_watch_hot_reloads_and_survives_bad_versions(registry: ModelRegistry,
                                                           store: Any) -> None:
    v1, e1 = fc(0.2)
    v2, e2 = fc(-0.7)
    await put(store, "fc.tflite", v1, sha(v1))
    spec = ModelSpec(name="fc", object="fc.tflite")
    await registry.load(spec)
    await registry.watch("models")
    await asyncio.sleep(0.1)
    assert registry.status()["fc"].loads == 1  # the current version is not reloaded

    await put(store, "fc.tflite", v2, sha(v2))
    await wait_for_model(registry, "fc", sha(v2), timeout=5)
    np.testing.assert_allclose((await registry.infer("fc", [X]))[0], e2, rtol=1e-5)

    # a corrupt upload with a correct digest: fails to load, v2 keeps serving
    junk = b"\x00garbage" * 64
    await put(store, "fc.tflite", junk, sha(junk))
    await until(lambda: registry.status()["fc"].load_errors >= 1)
    assert "could not be loaded" in (registry.status()["fc"].last_load_error or "")
    # a bad digest upload: refused before loading
    await put(store, "fc.tflite", v1, "cd" * 32)
    await until(lambda: registry.status()["fc"].load_errors >= 2)
    st = registry.status()["fc"]
    assert st.load_errors == 2 and "does not match" in (st.last_load_error or "")
    assert st.sha256 == sha(v2)
    np.testing.assert_allclose((await registry.infer("fc", [X]))[0], e2, rtol=1e-5)

    # deleting the object keeps the loaded copy serving
    await store.delete("fc.tflite")
    await asyncio.sleep(0.1)
    assert registry.status()["fc"].state == "serving"

    # and a good upload after all that is picked up
    await put(store, "fc.tflite", v1, sha(v1))
    await wait_for_model(registry, "fc", sha(v1), timeout=5)
    np.testing.assert_allclose((await registry.infer("fc", [X]))[0], e1, rtol=1e-5)


async def test_wait_for_model_times_out(registry: ModelRegistry) -> None:
    with pytest.raises(InferenceError) as ei:
        await wait_for_model(registry, "x", "0" * 64, timeout=0.05)
    assert ei.value.reason == "timeout"


# -- config ---------------------------------------------------------------------------------------


def test_parse_model_specs() -> None:
    specs = parse_model_specs([
        {"name": "face", "path": "/models/face.tflite", "threads": 2},
        {"name": "det", "object": "det.tflite", "bucket": "ml", "sha256": "AB" * 32,
         "delegate": "edgetpu", "delegate_optional": True,
         "delegate_options": {"device": "usb"}},
    ], file="edge.toml")
    assert specs[0].source == "/models/face.tflite" and specs[0].threads == 2
    d = specs[1]
    assert d.source == "object://ml/det.tflite" and d.sha256 == "ab" * 32
    opts = d.load_options()
    assert opts.delegate is not None and opts.delegate.resolved_library == "libedgetpu.so.1"
    assert opts.delegate.optional and dict(opts.delegate.options) == {"device": "usb"}
    assert parse_model_specs(None) == []


@pytest.mark.parametrize(
    ("raw", "key", "text"),
    [
        ({"name": "a"}, "models[0].path", "exactly one of"),
        ({"name": "a", "path": "x", "object": "y"}, "models[0].path", "exactly one of"),
        ({"name": "a b", "path": "x"}, "models[0].name", "must match"),
        ({"name": "a", "path": "x", "sha256": "xyz"}, "models[0].sha256", "64 hex"),
        ({"name": "a", "path": "x", "threads": 0}, "models[0].threads", "1..64"),
        ({"name": "a", "path": "x", "threads": True}, "models[0].threads", "expected an integer"),
        ({"name": "a", "path": "x", "delegat": "edgetpu"}, "models[0].delegat", "unknown key 'delegat'"),
        ({"name": "a", "path": ""}, "models[0].path", "non-empty"),
        ({"name": "a", "path": "x", "delegate_optional": "yes"},
         "models[0].delegate_optional", "true or false"),
        ({"name": "a", "path": "x", "delegate_options": 3}, "models[0].delegate_options",
         "table"),
    ],
)
def test_parse_model_specs_errors(raw: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_model_specs([raw], file="edge.toml")
    assert ei.value.key == key and text in str(ei.value) and "edge.toml" in str(ei.value)


def test_parse_model_specs_duplicates_and_shape() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        parse_model_specs([{"name": "a", "path": "x"}, {"name": "a", "path": "y"}])
    with pytest.raises(ConfigError, match="array of tables"):
        parse_model_specs({"name": "a"})


async def test_object_fetch_times_out_when_chunks_vanish(backend: Backend, nc: Client,
                                                         store: Any) -> None:
    v1, _ = fc(0.2)
    await put(store, "fc.tflite", v1, sha(v1))
    info = await store.get_info("fc.tflite")
    # remove the data chunks but keep the metadata: a download then never completes
    await nc.jetstream().purge_stream("OBJ_models", subject=f"$O.models.C.{info.nuid}")
    reg = ModelRegistry(js=nc.jetstream(), backend=backend, fetch_timeout=0.3)
    with pytest.raises(InferenceError) as ei:
        await asyncio.wait_for(reg.load(ModelSpec(name="fc", object="fc.tflite")), 5)
    assert ei.value.reason == "fetch" and ei.value.got == "timeout"
    assert reg.status()["fc"].state == "failed"
    await reg.close()
