"""The compiled rule engine: a :class:`~edge.policy.rules.Policy` compiled into per-(principal
kind, action) tables, with an exact-key decision cache.

Key components
- :class:`CompiledPolicy`: built once per load (never changed after), so swapping the one
  reference the policy point holds is an atomic reload; its cache lives and dies with it, so a
  reload invalidates every cached decision at once. ``generation`` numbers the loads.
- :meth:`CompiledPolicy.decide`: the cached decision; :meth:`CompiledPolicy.decide_uncached`:
  the same decision computed from the rules every time (tests prove the two equal).

Precedence (docs/policy.md): an invalid principal or resource is denied (rule ``invalid``); then
the first matching ``deny`` rule (file order) decides; then the first matching ``allow`` rule;
then an existing grant (a manifest's publish/subscribe/models, the tools permissions, a
component's own KV: rule ``grant``); otherwise ``default`` deny.

Only decisions no conditional rule could change are cached: a decision where a rule with
``labels``, ``link`` or ``hours`` matched the resource is computed each time (the cache key holds
no context). The cache is bounded (:data:`CACHE_MAX`): when full it is cleared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.nats.subjects import tokens_match
from edge.policy.model import ACTIONS, KINDS, Context, Decision, valid_principal, valid_resource
from edge.policy.rules import Limit, Policy, Rule

#: Cached decisions per compiled policy; the cache is cleared when it is full.
CACHE_MAX = 16384

ContextFn = Callable[[], Context]


@dataclass(frozen=True, slots=True)
class _Entry:
    ids: frozenset[str] | None  # None: every id
    patterns: tuple[tuple[str, ...], ...]  # the resource patterns, split into tokens
    rule: Rule

    def matches(self, pid: str, tokens: list[str]) -> bool:
        if self.ids is not None and pid not in self.ids:
            return False
        for p in self.patterns:
            if tokens_match(p, tokens):
                return True
        return False


@dataclass(frozen=True, slots=True)
class _LimitEntry:
    ids: frozenset[str] | None
    patterns: tuple[tuple[str, ...], ...]
    limit: Limit

    def matches(self, pid: str, tokens: list[str]) -> bool:
        if self.ids is not None and pid not in self.ids:
            return False
        return any(tokens_match(p, tokens) for p in self.patterns)


def _split(patterns: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(p.split(".")) for p in patterns)


def _ids(principals: Sequence[tuple[str, str]], kind: str) -> frozenset[str] | None | bool:
    """The ids of ``kind`` the principals name: None = every id, False = none."""
    ids: set[str] = set()
    for k, pid in principals:
        if k in ("*", kind):
            if pid == "*":
                return None
            ids.add(pid)
    return frozenset(ids) if ids else False


def holds(rule: Rule, ctx: Context) -> bool:
    """True if the rule's conditions hold in ``ctx``."""
    if rule.link is not None and ctx.link != rule.link:
        return False
    for k, v in rule.labels.items():
        if ctx.labels.get(k) != v:
            return False
    if rule.hours is not None:
        start, end = rule.hours
        m = ctx.minute_of_day()
        inside = start <= m < end if start < end else (m >= start or m < end)
        if not inside:
            return False
    return True


class CompiledPolicy:
    """One loaded policy, compiled. Immutable after construction (its cache aside)."""

    def __init__(self, policy: Policy, generation: int) -> None:
        self.policy = policy
        self.generation = generation
        self._deny: dict[tuple[str, str], tuple[_Entry, ...]] = {}
        self._allow: dict[tuple[str, str], tuple[_Entry, ...]] = {}
        self._limits: dict[tuple[str, str], tuple[_LimitEntry, ...]] = {}
        for kind in KINDS:
            for action in ACTIONS:
                key = (kind, action)
                for effect, table in (("deny", self._deny), ("allow", self._allow)):
                    entries = []
                    for rule in policy.rules:
                        if rule.effect != effect or action not in rule.actions:
                            continue
                        ids = _ids(rule.principals, kind)
                        if ids is not False:
                            entries.append(_Entry(ids, _split(rule.resources), rule))  # type: ignore[arg-type]
                    if entries:
                        table[key] = tuple(entries)
                limits = []
                for limit in policy.limits:
                    if action in limit.actions:
                        ids = _ids(limit.principals, kind)
                        if ids is not False:
                            limits.append(_LimitEntry(ids, _split(limit.resources), limit))  # type: ignore[arg-type]
                if limits:
                    self._limits[key] = tuple(limits)
        #: whether any rule has conditions (then the call site builds a context)
        self.conditional = any(r.conditional for r in policy.rules)
        #: whether any limit applies to anything
        self.limited = bool(self._limits)
        self._cache: dict[tuple[str, str, str, str, bool], Decision] = {}
        self._limit_cache: dict[tuple[str, str, str, str], tuple[Limit, ...]] = {}
        g = generation
        self._invalid = Decision(False, "invalid", "the principal or the resource is not valid", g)
        self._grant = Decision(True, "grant", "granted by the manifest or permissions", g)
        self._default = Decision(False, "default", "no rule, manifest or permission grants it", g)
        self._by_rule: dict[str, Decision] = {}
        for rule in policy.rules:
            text = rule.reason or (f"denied by rule '{rule.name}'" if rule.effect == "deny"
                                   else f"allowed by rule '{rule.name}'")
            self._by_rule[rule.name] = Decision(rule.effect == "allow", rule.name, text, g)

    # -- decisions ----------------------------------------------------------------------------

    def decide(self, kind: str, pid: str, action: str, resource: str, granted: bool = False,
               ctx: ContextFn | None = None) -> Decision:
        """The decision for ``kind:pid`` doing ``action`` to ``resource`` (cached)."""
        key = (kind, pid, action, resource, granted)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        decision, cacheable = self._evaluate(kind, pid, action, resource, granted, ctx)
        if cacheable:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def decide_uncached(self, kind: str, pid: str, action: str, resource: str,
                        granted: bool = False, ctx: ContextFn | None = None) -> Decision:
        """:meth:`decide` computed from the rules, without the cache."""
        return self._evaluate(kind, pid, action, resource, granted, ctx)[0]

    def _evaluate(self, kind: str, pid: str, action: str, resource: str, granted: bool,
                  ctx_fn: ContextFn | None) -> tuple[Decision, bool]:
        if not (isinstance(resource, str) and valid_principal(kind, pid) and valid_resource(resource)
                and action in ACTIONS):
            return self._invalid, False  # not cached: a fuzzed resource must not fill the cache
        key = (kind, action)
        dependent = False
        ctx: Context | None = None
        tokens = resource.split(".")
        for entry in self._deny.get(key, ()):
            if entry.matches(pid, tokens):
                if entry.rule.conditional:
                    dependent = True
                    if ctx is None:
                        ctx = ctx_fn() if ctx_fn is not None else Context()
                    if not holds(entry.rule, ctx):
                        continue
                    return self._by_rule[entry.rule.name], False
                return self._by_rule[entry.rule.name], True  # unconditional deny: context-free
        for entry in self._allow.get(key, ()):
            if entry.matches(pid, tokens):
                if entry.rule.conditional:
                    dependent = True
                    if ctx is None:
                        ctx = ctx_fn() if ctx_fn is not None else Context()
                    if not holds(entry.rule, ctx):
                        continue
                    return self._by_rule[entry.rule.name], False
                return self._by_rule[entry.rule.name], not dependent
        if granted:
            return self._grant, not dependent
        return self._default, not dependent

    # -- limits -------------------------------------------------------------------------------

    def limits(self, kind: str, pid: str, action: str, resource: str) -> tuple[Limit, ...]:
        """The limits that apply to ``kind:pid`` doing ``action`` to ``resource`` (cached)."""
        entries = self._limits.get((kind, action))
        if entries is None:
            return ()
        key = (kind, pid, action, resource)
        hit = self._limit_cache.get(key)
        if hit is None:
            tokens = resource.split(".")
            hit = tuple(e.limit for e in entries if e.matches(pid, tokens))
            if len(self._limit_cache) >= CACHE_MAX:
                self._limit_cache.clear()
            self._limit_cache[key] = hit
        return hit

    def stats(self) -> dict[str, int]:
        return {"generation": self.generation, "rules": len(self.policy.rules),
                "limits": len(self.policy.limits), "cached": len(self._cache)}
