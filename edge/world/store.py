"""The in-memory columnar store behind the ECS world.

Entities occupy slots. Every component field is one column indexed by slot: numeric fields in a
float64 numpy array (so a batch for a WebAssembly system is a gather of a few columns), ``str`` and
``json`` fields in an object array. A boolean mask per component says which slots have it; a dirty
mask per component records what the persister must write. A stamp column per component records
when each slot was last written on this device (``updated_at``, ``freshness``: how old a value is;
not persisted: a value restored from the store has no known age).

The store is not thread-safe: it is owned by the event loop.

Shared columns: when the platform has ``memfd_create`` (Linux), every numeric column lives in its
own anonymous memory file instead of private memory, so a sandbox worker process can map the
world's columns (``/proc/<pid>/fd/<fd>``) and copy straight between them and a component's
linear memory (see docs/sandbox.md). Growing the store extends each file in place (ftruncate +
a larger mapping): a slot never moves, so a mapping taken before a growth stays valid for every
slot it covers. Without ``memfd_create`` (or with ``shared=False``) the columns are plain
private numpy arrays and systems get batches through gather/scatter copies.

While a batch is *in flight* (a :class:`BatchLease` is held: a worker may be reading or writing
the columns of its slots), slots freed by :meth:`World.remove` are quarantined, not reused, and
slots whose component is removed are cleared again when the last lease is released.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import EntityError, SchemaError
from edge.world.schema import NUMERIC_TYPES, ComponentSchema, SchemaRegistry

log = logging.getLogger("edge.world.store")

ENTITY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
INITIAL_CAPACITY = 64  # slots; doubles when full
F64_BYTES = 8

F64Array = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]


@dataclass
class EntityMeta:
    """What an entity is, apart from its components."""

    id: str
    kind: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "labels": dict(self.labels)}


@dataclass
class Query:
    """The entities having every one of ``components``, as slots (``index``) and ``ids``.

    ``contiguous`` is true when the slots are exactly ``0..n-1``, so columns can be sliced instead of
    gathered. ``version`` changes whenever the set of matching entities may have changed.
    """

    components: tuple[str, ...]
    index: IndexArray
    ids: list[str]
    version: int
    contiguous: bool

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ColumnRef:
    """Where a shared numeric column lives, for another process to map it.

    ``path`` opens the column's memory file (``/proc/<pid>/fd/<fd>`` of this process), ``ino``
    identifies it (a reader must check it: the fd number may be reused after the world is
    closed), ``nbytes`` is its current size (``8 * capacity``; it only grows). Slot ``s`` is
    the float64 at byte ``8 * s``.
    """

    path: str
    ino: int
    nbytes: int


class _SharedColumn:
    """One float64 column in its own anonymous memory file, grown in place."""

    def __init__(self, name: str, capacity: int) -> None:
        fd = os.memfd_create(f"edge-col-{name}", os.MFD_CLOEXEC)
        self.fd = fd
        self.ino = os.fstat(fd).st_ino
        self.path = f"/proc/{os.getpid()}/fd/{fd}"
        self._finalizer = weakref.finalize(self, os.close, fd)
        self.capacity = 0
        self.array: F64Array = np.zeros(0, dtype=np.float64)
        self.resize(capacity)

    def resize(self, capacity: int) -> None:
        """Extend the file (new slots read as 0.0) and map it again; old mappings stay valid."""
        os.ftruncate(self.fd, capacity * F64_BYTES)
        self.array = np.frombuffer(mmap.mmap(self.fd, capacity * F64_BYTES), dtype=np.float64)
        self.capacity = capacity

    def ref(self) -> ColumnRef:
        return ColumnRef(self.path, self.ino, self.capacity * F64_BYTES)

    def close(self) -> None:
        self._finalizer()


def _shared_memory_available() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd")


class BatchLease:
    """A batch in flight: until :meth:`release`, freed slots are quarantined (see World)."""

    def __init__(self, world: World) -> None:
        self._world: World | None = world

    def release(self) -> None:
        """End the flight (idempotent). Call it only once no other process can touch the batch."""
        world, self._world = self._world, None
        if world is not None:
            world._end_lease()

    @property
    def active(self) -> bool:
        return self._world is not None


def check_entity_id(entity: str) -> None:
    if not isinstance(entity, str) or not ENTITY_ID_RE.match(entity):
        raise EntityError(
            f"entity id {entity!r} is invalid: use 1-64 characters of A-Z a-z 0-9 _ -",
            entity=str(entity),
        )


Provenance = Callable[[str, str], Mapping[str, Any] | None]


class World:
    """Entities, their metadata and their component columns."""

    def __init__(
        self,
        schemas: SchemaRegistry | None = None,
        capacity: int = INITIAL_CAPACITY,
        *,
        shared: bool | None = None,
    ) -> None:
        """``shared``: keep numeric columns in shared memory files (None = when available)."""
        self.schemas = schemas or SchemaRegistry()
        self.shared = _shared_memory_available() if shared is None else bool(shared)
        self._shm: dict[str, _SharedColumn] = {}
        self._leases = 0
        self._quarantine: list[int] = []  # freed slots waiting for the last lease to end
        self._reclear: list[tuple[int, str]] = []  # (slot, component) cleared during a flight
        self._capacity = max(1, capacity)
        self._ids: list[str | None] = [None] * self._capacity
        self._slot: dict[str, int] = {}
        self._free: list[int] = list(range(self._capacity - 1, -1, -1))
        self._meta: dict[str, EntityMeta] = {}
        self._cols: dict[str, npt.NDArray[Any]] = {}
        self._has: dict[str, npt.NDArray[np.bool_]] = {}
        self._dirty: dict[str, npt.NDArray[np.bool_]] = {}
        self._stamp: dict[str, F64Array] = {}  # component -> wall time (s) of each slot's last write
        self.provenance: Provenance | None = None  # who writes a component (the hardware layer sets it)
        self._meta_dirty: set[str] = set()
        self._removed: dict[str, list[str]] = {}  # entity -> components, to delete from the store
        self._unset: set[tuple[str, str]] = set()
        self._queries: dict[tuple[str, ...], Query] = {}
        self.version = 0  # bumped when entities or their component sets change
        self.changes = 0  # bumped on every write

    # -- entities -----------------------------------------------------------------------------

    def __contains__(self, entity: object) -> bool:
        return entity in self._slot

    def __len__(self) -> int:
        return len(self._slot)

    def spawn(
        self,
        entity: str,
        kind: str = "",
        labels: Mapping[str, str] | None = None,
        components: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        exist_ok: bool = False,
    ) -> EntityMeta:
        """Create an entity with optional components (validated before anything is stored)."""
        check_entity_id(entity)
        if entity in self._slot:
            if exist_ok:
                return self._meta[entity]
            raise EntityError(f"entity '{entity}' already exists", entity=entity)
        checked = {
            name: self._schema(name).validate(values, partial=False)
            for name, values in (components or {}).items()
        }
        meta = EntityMeta(entity, str(kind), {str(k): str(v) for k, v in (labels or {}).items()})
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._ids[slot] = entity
        self._slot[entity] = slot
        self._meta[entity] = meta
        self._meta_dirty.add(entity)
        self._removed.pop(entity, None)
        for name, values in checked.items():
            self._write(slot, name, values, adding=True)
        self._bump_structure()
        return meta

    def remove(self, entity: str) -> None:
        slot = self._slot_of(entity)
        comps = [name for name, has in self._has.items() if has[slot]]
        for name in comps:
            self._has[name][slot] = False
            self._dirty[name][slot] = False
            self._clear_slot(name, slot)
        del self._slot[entity]
        del self._meta[entity]
        self._ids[slot] = None
        if self._leases:
            self._quarantine.append(slot)  # a worker may still read or write it
        else:
            self._free.append(slot)
        self._meta_dirty.discard(entity)
        self._removed[entity] = comps
        self._bump_structure()

    def meta(self, entity: str) -> EntityMeta:
        self._slot_of(entity)
        return self._meta[entity]

    def entities(self, kind: str | None = None, labels: Mapping[str, str] | None = None) -> list[EntityMeta]:
        out = []
        for meta in self._meta.values():
            if kind is not None and meta.kind != kind:
                continue
            if labels and any(meta.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(meta)
        return sorted(out, key=lambda m: m.id)

    def components_of(self, entity: str) -> list[str]:
        slot = self._slot_of(entity)
        return sorted(name for name, has in self._has.items() if has[slot])

    # -- components ---------------------------------------------------------------------------

    def set(self, entity: str, component: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into the entity's component, adding the component if it is missing."""
        slot = self._slot_of(entity)
        schema = self._schema(component)
        adding = not self._has_component(component, slot)
        checked = schema.validate(values, partial=True)
        if adding:
            checked = {**schema.validate({}, partial=False), **checked}
        self._write(slot, component, checked, adding=adding)
        if adding:
            self._bump_structure()
        return self.get(entity, component)

    def get(self, entity: str, component: str) -> dict[str, Any]:
        slot = self._slot_of(entity)
        schema = self._schema(component)
        if not self._has_component(component, slot):
            raise EntityError(f"entity '{entity}' has no component '{component}'", entity=entity)
        return {name: self._read(component, name, kind, slot) for name, kind in schema.fields.items()}

    def get_all(self, entity: str) -> dict[str, dict[str, Any]]:
        return {name: self.get(entity, name) for name in self.components_of(entity)}

    def updated_at(self, entity: str, component: str) -> float | None:
        """Wall time (``time.time()``) of the component's last write on this device, None if it
        was not written since the world was built (a value restored from the store)."""
        if not self.has(entity, component):
            return None
        t = float(self._stamp[component][self._slot_of(entity)])
        return t if t > 0 else None

    def freshness(self, entity: str) -> dict[str, dict[str, Any]]:
        """Per component of ``entity``: ``age_s`` since its last write (None if unknown) and,
        for components a driver writes, ``source``, ``stale`` and the other sources
        (:attr:`provenance`)."""
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        for component in self.components_of(entity):
            t = self.updated_at(entity, component)
            info: dict[str, Any] = {"age_s": None if t is None else round(max(0.0, now - t), 3)}
            extra = self.provenance(entity, component) if self.provenance is not None else None
            if extra:
                info.update(extra)
            out[component] = info
        return out

    def has(self, entity: str, component: str) -> bool:
        return component in self._has and self._has_component(component, self._slot_of(entity))

    def unset(self, entity: str, component: str) -> None:
        slot = self._slot_of(entity)
        if not self._has_component(component, slot):
            raise EntityError(f"entity '{entity}' has no component '{component}'", entity=entity)
        self._has[component][slot] = False
        self._dirty[component][slot] = False
        self._clear_slot(component, slot)
        if self._leases:
            self._reclear.append((slot, component))
        self._unset.add((entity, component))
        self._bump_structure()

    # -- queries and batches ------------------------------------------------------------------

    def query(self, components: Sequence[str]) -> Query:
        """Entities that have every component in ``components`` (cached until the structure changes)."""
        key = tuple(sorted(set(components)))
        cached = self._queries.get(key)
        if cached is not None and cached.version == self.version:
            return cached
        for name in key:
            self._ensure(self._schema(name))
        mask = np.zeros(self._capacity, dtype=bool)
        if key:
            mask[:] = True
            for name in key:
                mask &= self._has[name]
        index = np.flatnonzero(mask).astype(np.intp)
        ids = [self._ids[i] or "" for i in index]
        n = len(index)
        contiguous = n == 0 or (int(index[0]) == 0 and int(index[-1]) == n - 1)
        q = Query(key, index, ids, self.version, contiguous)
        self._queries[key] = q
        return q

    def column(self, qualified: str) -> F64Array:
        """The float64 column of a numeric field ``component.field`` (indexed by slot)."""
        comp, _, name = qualified.partition(".")
        schema = self._schema(comp)
        kind = schema.fields.get(name)
        if kind is None:
            raise SchemaError(f"component '{comp}' has no field '{name}'", component=comp, field=name)
        if kind not in NUMERIC_TYPES:
            raise SchemaError(
                f"field '{qualified}' is {kind}; only numeric fields can be batch columns",
                component=comp,
                field=name,
            )
        self._ensure(schema)
        col: F64Array = self._cols[qualified]
        return col

    def gather(self, q: Query, fields: Sequence[str], out: Sequence[F64Array]) -> None:
        """Copy the batch rows of each field column into ``out`` (same order, length ``len(q)``)."""
        n = len(q)
        for name, dst in zip(fields, out):
            col = self.column(name)
            if q.contiguous:
                dst[:n] = col[:n]
            else:
                np.take(col, q.index, out=dst[:n])

    def scatter(self, q: Query, fields: Sequence[str], data: Sequence[F64Array]) -> None:
        """Write batch rows back into the columns and mark the components dirty."""
        n = len(q)
        touched: set[str] = set()
        for name, src in zip(fields, data):
            col = self.column(name)
            if q.contiguous:
                col[:n] = src[:n]
            else:
                col[q.index] = src[:n]
            touched.add(name.partition(".")[0])
        now = time.time()
        for comp in touched:
            if q.contiguous:
                self._dirty[comp][:n] = True
                self._stamp[comp][:n] = now
            else:
                self._dirty[comp][q.index] = True
                self._stamp[comp][q.index] = now
        self.changes += 1

    # -- shared columns and batches in flight ---------------------------------------------------

    def shared_refs(self, fields: Sequence[str]) -> tuple[ColumnRef, ...] | None:
        """Where the numeric columns ``fields`` live, or None if this world's columns are private."""
        if not self.shared:
            return None
        for name in fields:
            self.column(name)
        return tuple(self._shm[name].ref() for name in fields)

    def lease(self) -> BatchLease:
        """Mark a batch in flight: until the lease is released, freed slots are not reused."""
        self._leases += 1
        return BatchLease(self)

    @property
    def in_flight(self) -> int:
        return self._leases

    def _end_lease(self) -> None:
        self._leases -= 1
        if self._leases:
            return
        # A worker may have written into these slots after they were cleared: clear again.
        for slot in self._quarantine:
            for comp in self._has:
                self._clear_slot(comp, slot)
        self._free.extend(reversed(self._quarantine))
        self._quarantine.clear()
        for slot, comp in self._reclear:
            if not self._has[comp][slot]:
                self._clear_slot(comp, slot)
        self._reclear.clear()

    def mark_written(self, q: Query, fields: Sequence[str]) -> None:
        """Record that a system wrote ``fields`` of the batch ``q`` in place (shared columns):
        marks the components dirty where the entity still has them."""
        n = len(q)
        for comp in {name.partition(".")[0] for name in fields}:
            has = self._has[comp]
            if q.contiguous:
                self._dirty[comp][:n] |= has[:n]
            else:
                self._dirty[comp][q.index] |= has[q.index]
        self.changes += 1

    def close(self) -> None:
        """Release the shared memory files (the world keeps working on private copies)."""
        for key, col in self._shm.items():
            self._cols[key] = np.array(col.array)
            col.close()
        self._shm.clear()
        self.shared = False

    # -- persistence hooks --------------------------------------------------------------------

    def take_changes(
        self,
    ) -> tuple[
        list[tuple[str, str, dict[str, Any]]], list[EntityMeta], list[tuple[str, str]], list[tuple[str, list[str]]]
    ]:
        """Hand over and clear what changed since the last call.

        Returns (component values to write, entity metadata to write, (entity, component) pairs
        to delete, removed entities with the components they had).
        """
        writes: list[tuple[str, str, dict[str, Any]]] = []
        for comp, dirty in self._dirty.items():
            slots = np.flatnonzero(dirty)
            if len(slots) == 0:
                continue
            dirty[slots] = False
            for slot in slots:
                entity = self._ids[int(slot)]
                if entity is not None:
                    writes.append((entity, comp, self.get(entity, comp)))
        metas = [self._meta[e] for e in sorted(self._meta_dirty) if e in self._meta]
        self._meta_dirty.clear()
        unset = sorted(self._unset)
        self._unset.clear()
        removed = sorted(self._removed.items())
        self._removed.clear()
        return writes, metas, unset, removed

    def mark_all_dirty(self) -> None:
        for comp, has in self._has.items():
            self._dirty[comp] |= has
        self._meta_dirty.update(self._meta)

    def clear_changes(self) -> None:
        """Forget pending changes (used after restoring from the store)."""
        for dirty in self._dirty.values():
            dirty[:] = False
        self._meta_dirty.clear()
        self._removed.clear()
        self._unset.clear()

    # -- internals ----------------------------------------------------------------------------

    def _schema(self, component: str) -> ComponentSchema:
        return self.schemas.get(component)

    def _slot_of(self, entity: str) -> int:
        slot = self._slot.get(entity)
        if slot is None:
            raise EntityError(f"no entity '{entity}'", entity=entity)
        return slot

    def _has_component(self, component: str, slot: int) -> bool:
        has = self._has.get(component)
        return bool(has is not None and has[slot])

    def _ensure(self, schema: ComponentSchema) -> None:
        if schema.name in self._has:
            return
        for name, kind in schema.fields.items():
            key = f"{schema.name}.{name}"
            if kind in NUMERIC_TYPES and self.shared:
                self._cols[key] = self._new_shared(key)
            elif kind in NUMERIC_TYPES:
                self._cols[key] = np.zeros(self._capacity, dtype=np.float64)
            else:
                self._cols[key] = np.full(self._capacity, None, dtype=object)
        self._has[schema.name] = np.zeros(self._capacity, dtype=bool)
        self._dirty[schema.name] = np.zeros(self._capacity, dtype=bool)
        self._stamp[schema.name] = np.zeros(self._capacity, dtype=np.float64)

    def _write(self, slot: int, component: str, values: Mapping[str, Any], *, adding: bool) -> None:
        schema = self._schema(component)
        self._ensure(schema)
        for name, value in values.items():
            kind = schema.fields[name]
            col = self._cols[f"{component}.{name}"]
            col[slot] = float(value) if kind in NUMERIC_TYPES else value
        self._has[component][slot] = True
        self._dirty[component][slot] = True
        self._stamp[component][slot] = time.time()
        self.changes += 1

    def _read(self, component: str, name: str, kind: str, slot: int) -> Any:
        value = self._cols[f"{component}.{name}"][slot]
        if kind == "f64":
            return float(value)
        if kind == "i64":
            return int(value)
        if kind == "bool":
            return bool(value)
        return value if value is not None or kind == "json" else ""

    def _clear_slot(self, component: str, slot: int) -> None:
        schema = self._schema(component)
        for name, kind in schema.fields.items():
            self._cols[f"{component}.{name}"][slot] = 0.0 if kind in NUMERIC_TYPES else None
        if component in self._stamp:
            self._stamp[component][slot] = 0.0

    def _new_shared(self, key: str) -> F64Array:
        try:
            col = _SharedColumn(key, self._capacity)
        except OSError as err:
            log.warning("shared memory unavailable (%s); world columns stay private", err)
            self.close()
            return np.zeros(self._capacity, dtype=np.float64)
        self._shm[key] = col
        return col.array

    def _grow(self) -> None:
        old = self._capacity
        new = old * 2
        for key, col in self._cols.items():
            shm = self._shm.get(key)
            if shm is not None:
                shm.resize(new)  # in place: slots keep their address in the file
                self._cols[key] = shm.array
                continue
            grown = np.zeros(new, dtype=col.dtype) if col.dtype != object else np.full(new, None, dtype=object)
            grown[:old] = col
            self._cols[key] = grown
        for table in (self._has, self._dirty):
            for key, mask in table.items():
                grown_mask = np.zeros(new, dtype=bool)
                grown_mask[:old] = mask
                table[key] = grown_mask
        for key, stamps in self._stamp.items():
            grown_stamps = np.zeros(new, dtype=np.float64)
            grown_stamps[:old] = stamps
            self._stamp[key] = grown_stamps
        self._ids.extend([None] * (new - old))
        self._free.extend(range(new - 1, old - 1, -1))
        self._capacity = new
        self._bump_structure()

    def _bump_structure(self) -> None:
        self.version += 1
