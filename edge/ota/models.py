"""Model artifacts: a ``.tflite`` file with a stored probe, checked before it is activated.

A model artifact (``model/<name>/<version>.tar``) holds exactly ``model.tflite``, ``probe.json``
(``{"outputs": [[shape], ...]}``: the shapes the probe must produce) and ``probe-<i>.npy`` (one
input array per model input). :func:`pack_model` makes one on the fleet side (the probe inputs
default to zeros of each input's shape and dtype; the expected shapes default to what the model
itself produces for them). :func:`probe` runs the staged model on its probe in a scratch
interpreter on the device and refuses it (reason ``probe``) unless it loads, runs and produces
outputs of the expected shapes; only then is it handed to the inference registry.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from edge.ota import tarball
from edge.ota.errors import OtaError

MODEL = "model.tflite"
PROBE = "probe.json"
MAX_MODEL_BYTES = 256 * 2**20
MAX_PROBE_BYTES = 16 * 2**20
MAX_INPUTS = 16


def _npy(a: Any) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def pack_model(model: bytes, *, inputs: list[Any] | None = None,
               expect: list[list[int]] | None = None) -> bytes:
    """The artifact of ``model`` with its probe (see the module docstring)."""
    import numpy as np

    if inputs is None or expect is None:
        from edge.inference.backend import select_backend
        from edge.inference.model import Model

        m = Model.load("probe", model, select_backend())
        try:
            if inputs is None:
                inputs = [np.zeros(t.shape, dtype=np.float32 if t.quantized else t.dtype) for t in m.inputs]
            if expect is None:
                expect = [list(o.shape) for o in m.invoke_sync(inputs)]
        finally:
            m.close()
    files = [(MODEL, model), (PROBE, json.dumps({"outputs": expect}).encode())]
    files += [(f"probe-{i}.npy", _npy(a)) for i, a in enumerate(inputs)]
    return tarball.pack(files)


def unpack_model(data: bytes, dest: Path, *, artifact: str) -> None:
    allowed = {MODEL: MAX_MODEL_BYTES, PROBE: 64 * 1024,
               **{f"probe-{i}.npy": MAX_PROBE_BYTES for i in range(MAX_INPUTS)}}
    seen = tarball.read_members(data, allowed, artifact=artifact, what="a model bundle",
                                holds=f"{MODEL}, {PROBE} and probe-<i>.npy")
    tarball.require(seen, (MODEL, PROBE), artifact=artifact)
    tarball.write_members(seen, dest)


async def probe(name: str, staged: Path, backend: Any, *, artifact: str) -> None:
    """Run the staged model on its stored probe; OtaError (reason ``probe``) unless it produces
    outputs of the expected shapes."""
    import numpy as np

    from edge.errors import EdgeError
    from edge.inference.model import Model

    try:
        spec = json.loads((staged / PROBE).read_bytes())
        expect = [list(map(int, s)) for s in spec["outputs"]]
        inputs = []
        i = 0
        while (staged / f"probe-{i}.npy").exists():
            inputs.append(np.load(staged / f"probe-{i}.npy", allow_pickle=False))
            i += 1
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OtaError(f"artifact {artifact}: its probe is unreadable: {err}", artifact=artifact,
                       reason="invalid") from err
    model = None
    try:
        model = await Model.open(name, (staged / MODEL).read_bytes(), backend, source=artifact)
        outputs = await model.invoke(inputs)
    except EdgeError as err:
        raise OtaError(f"artifact {artifact}: the model failed its probe: {err.message}", artifact=artifact,
                       reason="probe") from err
    finally:
        if model is not None:
            model.close()
    got = [list(o.shape) for o in outputs]
    if got != expect:
        raise OtaError(f"artifact {artifact}: the probe produced outputs of shapes {got}, expected {expect}",
                       artifact=artifact, reason="probe")
