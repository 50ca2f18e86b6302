from __future__ import annotations

import numpy as np
import pytest

from edge.errors import EntityError, SchemaError
from edge.world.schema import ComponentSchema, SchemaRegistry
from edge.world.store import World


def test_spawn_get_set_merge() -> None:
    w = World()
    w.spawn("d1", "drone", {"fleet": "a"}, {"position": {"x": 1, "y": 2}})
    assert w.get("d1", "position") == {"x": 1.0, "y": 2.0, "z": 0.0}
    w.set("d1", "position", {"z": 5.5})
    assert w.get("d1", "position") == {"x": 1.0, "y": 2.0, "z": 5.5}
    w.set("d1", "flight", {"armed": True, "mode": "GUIDED"})
    assert w.get("d1", "flight") == {"armed": True, "mode": "GUIDED", "system_status": ""}
    assert w.components_of("d1") == ["flight", "position"]
    assert [m.id for m in w.entities(kind="drone")] == ["d1"]
    assert w.entities(labels={"fleet": "b"}) == []


def test_schema_errors_name_component_and_field() -> None:
    w = World()
    w.spawn("d1")
    with pytest.raises(SchemaError) as err:
        w.set("d1", "position", {"q": 1})
    assert err.value.component == "position" and err.value.field == "q"
    with pytest.raises(SchemaError, match="expects a number"):
        w.set("d1", "position", {"x": "far"})
    with pytest.raises(SchemaError, match="finite"):
        w.set("d1", "position", {"x": float("nan")})
    with pytest.raises(SchemaError, match="true or false"):
        w.set("d1", "flight", {"armed": 1})
    with pytest.raises(SchemaError, match="unknown component"):
        w.set("d1", "warp", {"x": 1})
    # a failed spawn stores nothing
    with pytest.raises(SchemaError):
        w.spawn("d2", components={"position": {"x": "no"}})
    assert "d2" not in w


def test_entity_errors() -> None:
    w = World()
    w.spawn("d1")
    with pytest.raises(EntityError, match="already exists"):
        w.spawn("d1")
    with pytest.raises(EntityError, match="invalid"):
        w.spawn("bad id!")
    with pytest.raises(EntityError, match="no entity"):
        w.get("nope", "position")
    with pytest.raises(EntityError, match="no component"):
        w.get("d1", "position")


def test_query_gather_scatter_contiguous_and_sparse() -> None:
    w = World(capacity=2)  # forces growth
    for i in range(10):
        comps = {"position": {"x": i}}
        if i % 2 == 0:
            comps["velocity"] = {"x": 10 * i}
        w.spawn(f"e{i}", components=comps)
    q = w.query(["position", "velocity"])
    assert q.ids == ["e0", "e2", "e4", "e6", "e8"]
    assert not q.contiguous
    px = np.zeros(len(q))
    vx = np.zeros(len(q))
    w.gather(q, ["position.x", "velocity.x"], [px, vx])
    assert list(px) == [0, 2, 4, 6, 8]
    w.scatter(q, ["position.x"], [px + vx])
    assert w.get("e2", "position")["x"] == 22.0
    assert w.get("e3", "position")["x"] == 3.0  # not in the batch, untouched
    all_pos = w.query(["position"])
    assert all_pos.contiguous and len(all_pos) == 10


def test_query_cache_invalidated_on_structure_change() -> None:
    w = World()
    w.spawn("a", components={"position": {}})
    q1 = w.query(["position"])
    assert w.query(["position"]) is q1
    w.spawn("b", components={"position": {}})
    q2 = w.query(["position"])
    assert q2 is not q1 and q2.ids == ["a", "b"]
    w.remove("a")
    assert w.query(["position"]).ids == ["b"]


def test_slot_reuse_after_remove_clears_old_values() -> None:
    w = World()
    w.spawn("a", components={"position": {"x": 9}})
    w.remove("a")
    w.spawn("b")
    w.set("b", "position", {"y": 1})
    assert w.get("b", "position") == {"x": 0.0, "y": 1.0, "z": 0.0}


def test_take_changes_reports_writes_metas_and_removals() -> None:
    w = World()
    w.spawn("a", "drone", components={"position": {"x": 1}})
    writes, metas, unset, removed = w.take_changes()
    assert [(e, c) for e, c, _ in writes] == [("a", "position")]
    assert [m.id for m in metas] == ["a"]
    assert w.take_changes() == ([], [], [], [])
    q = w.query(["position"])
    buf = np.array([7.0])
    w.scatter(q, ["position.x"], [buf])
    writes, *_ = w.take_changes()
    assert writes == [("a", "position", {"x": 7.0, "y": 0.0, "z": 0.0})]
    w.set("a", "velocity", {})
    w.unset("a", "velocity")
    _, _, unset, _ = w.take_changes()
    assert unset == [("a", "velocity")]
    w.remove("a")
    assert w.take_changes()[3] == [("a", ["position"])]


def test_custom_schema_and_non_numeric_column_refused() -> None:
    reg = SchemaRegistry()
    reg.register(ComponentSchema("wind", {"speed": "f64", "label": "str"}))
    w = World(reg)
    w.spawn("s", components={"wind": {"speed": 3}})
    assert w.get("s", "wind") == {"speed": 3.0, "label": ""}
    with pytest.raises(SchemaError, match="only numeric"):
        w.column("wind.label")


def test_shared_columns_grow_in_place_and_private_fallback() -> None:
    w = World(capacity=2)
    assert w.shared  # Linux: memfd columns
    w.spawn("a", components={"position": {"x": 1}})
    early = w.column("position.x")
    (ref,) = w.shared_refs(["position.x"]) or ()
    for i in range(5):
        w.spawn(f"b{i}", components={"position": {"x": 2}})
    (grown,) = w.shared_refs(["position.x"]) or ()
    assert (grown.path, grown.ino) == (ref.path, ref.ino) and grown.nbytes == 8 * 8 > ref.nbytes
    early[0] = 5.0  # a mapping from before the growth still reaches the same slot
    assert w.get("a", "position")["x"] == 5.0
    w.close()
    assert not w.shared and w.shared_refs(["position.x"]) is None
    assert w.get("a", "position")["x"] == 5.0
    p = World(shared=False)
    p.spawn("a", components={"position": {"x": 1}})
    assert p.shared_refs(["position.x"]) is None and p.get("a", "position")["x"] == 1.0


def test_freed_slots_quarantined_while_a_lease_is_held() -> None:
    w = World(capacity=4)
    for e in "abcd":
        w.spawn(e, components={"position": {"x": 1}})
    lease = w.lease()
    slot_a = int(w.query(["position"]).index[0])
    w.remove("a")
    w.column("position.x")[slot_a] = 42.0  # a worker writing late into the freed slot
    w.spawn("e", components={"position": {}})
    assert w.query(["position"]).index.tolist() == [1, 2, 3, 4]  # slot 0 not reused
    lease.release()
    lease.release()  # idempotent
    assert w.in_flight == 0 and w.column("position.x")[slot_a] == 0.0
    w.spawn("f")
    w.set("f", "velocity", {})
    assert w.query(["velocity"]).index.tolist() == [slot_a]  # reused only after the flight
    q = w.query(["position"])
    w.unset("b", "position")
    w.take_changes()
    w.mark_written(q, ["position.x"])
    writes, *_ = w.take_changes()  # "b" lost position: not marked dirty
    assert sorted(e for e, _, _ in writes) == ["c", "d", "e"]


def test_every_write_is_stamped_and_reads_tell_the_age() -> None:
    import time

    w = World(shared=False)
    w.spawn("a", "drone", components={"position": {"x": 1.0}})
    w.spawn("b", "drone")
    t0 = time.time()
    assert w.updated_at("b", "position") is None  # no such component
    t_a = w.updated_at("a", "position")
    assert t_a is not None and t0 - 1 < t_a <= t0
    time.sleep(0.05)
    w.set("b", "velocity", {"x": 2.0})
    tb = w.updated_at("b", "velocity")
    assert tb is not None and tb > t_a
    f = w.freshness("a")
    assert set(f) == {"position"} and f["position"]["age_s"] >= 0.05
    w.provenance = lambda e, c: {"source": "fc", "stale": True} if c == "position" else None
    assert w.freshness("a")["position"]["source"] == "fc" and w.freshness("a")["position"]["stale"] is True
    time.sleep(0.02)
    q = w.query(["position"])
    px = np.zeros(len(q))
    w.gather(q, ["position.x"], [px])
    w.scatter(q, ["position.x"], [px + 1])  # a system's batch write stamps too
    t_s = w.updated_at("a", "position")
    assert t_s is not None and t_s > tb
    w.unset("a", "position")
    w.set("a", "position", {"y": 1.0})
    assert (w.updated_at("a", "position") or 0) >= t_s
    for i in range(40):  # growing the store keeps the stamps
        w.spawn(f"e{i}", "x", components={"position": {"x": float(i)}})
    assert w.updated_at("a", "position") is not None and w.updated_at("e0", "position") is not None
