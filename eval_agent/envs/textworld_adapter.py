"""The one place that reads or writes private parts of TextWorld's PDDL engine and of fast-downward.

:class:`~eval_agent.envs.alfworld_env.AlfWorldEnv` uses them for speed only; each use has a public-API
path that gives the same observations. :func:`internals_supported` checks the installed versions
against the ones the tests cover (:data:`TESTED_VERSIONS`); with others the environment takes the
public path (load + reset + replay, no memo, the planner's ``policy_commands`` as the expert) and
logs one warning. ``tests/test_alfworld_env.py`` plays the same actions both ways and compares.

Two groups of internals live here:

* engine states: :func:`load_game` keeps a loaded game's parts, :func:`take_snapshot` /
  :func:`restore_snapshot` save and put back a state (the fast-downward operators applied since
  the initial state plus copies of the Python-side fact sets), :func:`applied_operator` records
  the operator a step applied, :func:`oracle_view` and :func:`plan_from_state` give the expert the
  true facts and the planner;
* :class:`EngineMemo`, memoisation of pure functions of the engine, active only inside a block:

* fast-downward's ``pddl2sas``: ``PddlEnv.load`` and ``PddlEnv.reset`` both translate the same
  domain and problem (twice each: plain, and optimised for the planner);
* TextWorld's grammar-string parser (``textgen._parse_and_convert``, a TatSu parse): every step
  re-parses the command template of every applicable action and every feedback rule, and every
  game re-parses the same grammar rules;
* TextWorld's logic parser (``textworld.logic._parse_and_convert``, also TatSu): every
  conditional text (``[... | receptacleatlocation(r, lend)]``) re-parses its query each time;
* the engine's texts (``ContextSensitiveGrammar.derive``): after every step the engine derives
  the command of every applicable action (about 30) to list the admissible commands and to look
  up the next command, plus the step's feedback. A derivation is cached when its template and
  the grammar rules it names are built only from literal text, Python expressions over variables
  (``{r.name}``, ``{o.indefinite + ' ' + o.name}``), lists, conditionals over state queries
  (``[{r.name | receptacleatlocation(r:receptacle, lend:location)}]``) and rule conditions
  (queries deciding which of a symbol's rules applies: the engine takes the first that holds).
  Its text is then a function of the template, the mapping (the part the queries can see), the
  variables its expressions read and the state's facts of the queried predicates, which form the
  cache key (one cache per game state object; :func:`template_dependencies`,
  :func:`derivation_key`). Anything else (e.g. a Python call in a template) is derived afresh.
  (Where a query has several answers the engine lists them in the iteration order of its fact
  sets; a cached text keeps the order of its first derivation for the same facts.)

The first three are functions of their arguments only. Parsed symbols are deep-copied out of the cache
because the engine mutates them. With ``lazy_replan`` the planner's optimised translation, which
loading a game always computes but only replanning uses, is not computed at load: the plain
translation stands in for it, and the caller translates for the planner when it plans
(:meth:`EngineMemo.replan_sas`). The functions are swapped in for the duration of a
``with memo.active():`` block and put back afterwards, so code outside the block sees the engine
unchanged; the engine's outputs are identical (tests compare replays, observations and
admissible commands with and without the memo and against a raw TextWorld engine).
"""
from __future__ import annotations

import ast
import copy
import functools
import logging
import sys
import weakref
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from eval_agent.bounded_cache import BoundedCache
from eval_agent.package_versions import untested_versions
from eval_agent.types import StepOutcome

logger = logging.getLogger(__name__)

TESTED_VERSIONS = {"textworld": ("1.7.0",), "alfworld": ("0.4.2",), "fast-downward-textworld": ("20.6.4",)}
"""The versions whose internals the tests cover (``requirements.txt`` pins them)."""


@functools.cache
def internals_supported() -> bool:
    """True when the installed engine packages are versions the fast path was tested with; otherwise
    logs one warning (once per process) and the environment takes the public-API path."""
    wrong = untested_versions(TESTED_VERSIONS)
    if wrong:
        logger.warning("ALFWorld runs on the public TextWorld API (slower: every reset reloads and replays): "
                       "untested engine versions %s", "; ".join(wrong))
    return not wrong


@contextmanager
def keep_argv() -> Iterator[None]:
    """fast-downward's translator overwrites ``sys.argv`` while loading a game; put it back."""
    saved = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = saved


# ---------------------------------------------------------------------------------------- engine states
@dataclass
class Snapshot:
    """An engine state: fast-downward operators since the initial state plus Python-side copies."""

    ops: tuple[tuple[int, int], ...]  # (operator id, number of effect atoms)
    facts: dict[Any, set]
    vars_by_name: dict
    vars_by_type: dict[Any, set]
    var_counts: Counter
    operators: dict
    game_state: Any
    moves: int
    outcomes: tuple[StepOutcome, ...] = ()


@dataclass
class LoadedGame:
    """The parts of a loaded game the engine swaps in to play it, and its initial state."""

    path: Path
    game_data: dict
    logic: Any
    pddl_state: Any
    entity_infos: dict
    first_observation: str  # the engine's feedback after reset, as it wrote it
    initial: Snapshot | None = None


def load_game(env: Any, path: Path) -> LoadedGame:
    """Load ``path`` into ``env`` (ALFWorld's wrapped ``PddlEnv``), reset it and keep its parts."""
    env.load(str(path))
    state = env.reset()
    u = env.unwrapped
    game = LoadedGame(path, u._game_data, u._logic, u._pddl_state, u._entity_infos, state.feedback)
    game.initial = take_snapshot(u, (), ())
    return game


def take_snapshot(u: Any, ops: tuple[tuple[int, int], ...], outcomes: tuple[StepOutcome, ...]) -> Snapshot:
    """The current state of the unwrapped engine ``u``, reached by the operators ``ops``."""
    ps = u._pddl_state
    return Snapshot(ops=ops, facts={k: set(v) for k, v in ps._facts.items()}, vars_by_name=dict(ps._vars_by_name),
                    vars_by_type={k: set(v) for k, v in ps._vars_by_type.items()}, var_counts=Counter(ps._var_counts),
                    operators=dict(getattr(ps, "_operators", {})), game_state=u.state, moves=u._moves,
                    outcomes=outcomes)


def restore_snapshot(u: Any, game: LoadedGame, snap: Snapshot) -> None:
    """Put the unwrapped engine ``u`` in state ``snap`` of ``game``: reload the cached SAS task,
    re-apply the operators inside fast-downward and put the fact copies back."""
    import fast_downward

    ps = game.pddl_state
    u._game_data, u._logic, u._pddl_state, u._entity_infos = game.game_data, game.logic, ps, game.entity_infos
    u.walkthrough = game.game_data.get("walkthrough")
    lib = ps.downward_lib
    lib.load_sas(ps.sas.encode("utf-8"))
    for op_id, n_effects in snap.ops:
        lib.apply_operator(op_id, (fast_downward.Atom * n_effects)())
    ps._facts = defaultdict(set, {k: set(v) for k, v in snap.facts.items()})
    ps._vars_by_name = dict(snap.vars_by_name)
    ps._vars_by_type = defaultdict(set, {k: set(v) for k, v in snap.vars_by_type.items()})
    ps._var_counts = Counter(snap.var_counts)
    ps._operators = dict(snap.operators)
    u.state = snap.game_state
    u.prev_state = None
    u._last_action = None
    u._moves = snap.moves


def operators(u: Any) -> dict:
    """The operators applicable in the current state (read before a step: the step replaces them)."""
    return u._pddl_state._operators


def applied_operator(u: Any, operators_before: dict) -> tuple[int, int] | None:
    """``(operator id, number of effect atoms)`` of the operator the last step applied, or None."""
    if u._last_action is None:
        return None
    op = operators_before[u._last_action.id]
    return op.id, op.nb_effect_atoms


def oracle_view(u: Any) -> tuple[Any, dict]:
    """The true facts of the current state and the entity names, for the oracle expert."""
    return u._pddl_state.facts, u._entity_infos


def plan_from_state(u: Any, memo: "EngineMemo | None") -> list[str]:
    """fast-downward's plan (the engine's ``policy_commands``) from the current state."""
    ps = u._pddl_state
    if memo is not None and memo.lazy_replan and not getattr(ps, "_steca_replan_sas", False):
        with keep_argv():
            ps.sas_replan = EngineMemo.replan_sas(ps._logic.domain, ps.pddl_problem)
        ps._steca_replan_sas = True
    ps.downward_lib.load_sas_replan(ps.sas_replan.encode("utf-8"))
    return list(ps.replan(u._entity_infos))


# ---------------------------------------------------------------------------------------- memo

# Python expression nodes a cacheable ``{...}`` may use: variables, attributes, string literals, ``+``
_SAFE_EXPR_NODES = (ast.Expression, ast.Name, ast.Load, ast.Attribute, ast.Constant, ast.BinOp, ast.Add)


def _expression_names(expression: str) -> frozenset[str] | None:
    """The variable names a grammar ``{expression}`` reads, or None when it may read anything else."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return None
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_EXPR_NODES):
            return None
        if isinstance(node, ast.Constant) and not isinstance(node.value, str):
            return None
        if isinstance(node, ast.Name):
            names.add(node.id)
    return frozenset(names)


class TemplateDeps(NamedTuple):
    """What the text of a cacheable template depends on (besides the grammar and the game's entities)."""

    predicates: frozenset[str]  # facts of these predicates (queried by conditionals)
    free_names: frozenset[str]  # variables read by expressions outside any query
    query_placeholders: frozenset[tuple[str, str]]  # (name, type) of the queries' placeholders


# names an expression could resolve to inside textworld's ``EvalSymbol.derive`` instead of a variable
_RESERVED_NAMES = frozenset({"self", "context", "value"})


LIST_RULES = ("list_empty", "list_separator", "list_last_separator")  # what a [list] derives besides its items


def template_dependencies(symbols: list[Any], parse_query: Any, rules_of: Any) -> TemplateDeps | None:
    """What a parsed template's text depends on, or None when it is not cacheable.

    ``symbols``: the template parsed by ``textgen._parse_and_convert``; ``parse_query(given)``: a
    conjunctive query parsed into a textworld ``Rule``; ``rules_of(name)``: the grammar's
    production rules of ``#name#``. Cacheable: terminal text, ``{expr}`` over variables (see
    :func:`_expression_names`), lists, conditionals ``{expr | query}`` and grammar symbols whose
    rules are all cacheable (each rule's condition is a query on the state: the engine takes the
    first rule whose condition holds). The text is then a function of the facts of the queried
    predicates, the mapping (queries and conditions are evaluated against it) and the variables
    of the free names (expression names not bound by an enclosing query), which must all be
    variables of the derivation's context (checked by the caller).
    """
    from textworld.envs.pddl.textgen import (ConditionalSymbol, EvalSymbol, ListSymbol, NonterminalSymbol,
                                             TerminalSymbol)

    preds: set[str] = set()
    free: set[str] = set()
    placeholders: set[tuple[str, str]] = set()
    seen: set[tuple[str, frozenset[str]]] = set()

    def add_query(given: str) -> frozenset[str]:
        rule = parse_query(given)
        preds.update(p.name for p in rule.preconditions)
        phs = {(ph.name, ph.type) for p in rule.preconditions for ph in p.parameters}
        placeholders.update(phs)
        return frozenset(name for name, _ in phs)

    stack: list[tuple[Any, frozenset[str]]] = [(s, frozenset()) for s in symbols]
    while stack:
        s, bound = stack.pop()
        if isinstance(s, TerminalSymbol):
            continue
        if isinstance(s, EvalSymbol):
            used = _expression_names(s.expression)
            if used is None or used & _RESERVED_NAMES:
                return None
            free |= used - bound
        elif isinstance(s, ListSymbol):
            stack.append((s.symbol, bound))
            stack.extend((NonterminalSymbol(name), bound) for name in LIST_RULES if rules_of(name))
        elif isinstance(s, ConditionalSymbol):
            stack.append((s.expression, bound | add_query(s.given) if s.given else bound))
        elif isinstance(s, NonterminalSymbol):
            if (str(s), bound) in seen:
                continue
            seen.add((str(s), bound))
            rules = rules_of(str(s))
            if not rules:
                return None  # the engine raises on an unknown symbol: leave that to it
            for rule in rules:
                if rule.condition:
                    add_query(rule.condition)  # decides which rule applies; binds nothing for the rhs
                stack.extend((x, bound) for x in rule.rhs)
        else:  # anything unknown: derive afresh
            return None
    return TemplateDeps(frozenset(preds), frozenset(free), frozenset(placeholders))


def derivation_key(deps: TemplateDeps, mapping: dict, variables: dict) -> tuple[Any, Any] | None:
    """The part of a derivation's mapping and variables its text depends on, or None if uncacheable.

    When every placeholder of the template's queries is bound by ``mapping``, a query only checks
    facts about bound variables: the text depends on those bindings and on the free names'
    variables, not on the rest of the mapping (e.g. the agent's current location in ``go to X``).
    Otherwise a query searches new variables, which must differ from every mapped one, so the
    whole mapping is part of the key. Variables are keyed by identity (the game's entity objects).
    """
    if not deps.free_names <= variables.keys():
        return None
    by_name = {(ph.name, ph.type): var for ph, var in mapping.items()}
    if deps.query_placeholders <= by_name.keys():
        part = tuple(sorted((ph, by_name[ph]) for ph in deps.query_placeholders))
    else:
        part = frozenset(mapping.items())
    return part, tuple(sorted((name, id(variables[name])) for name in deps.free_names))


class EngineMemo:
    """Caches for one environment instance (one process, one game at a time)."""

    def __init__(self, max_translations: int = 8, max_parses: int = 20000, lazy_replan: bool = True,
                 max_derivations: int = 50000):
        self.lazy_replan = lazy_replan
        self.translations: BoundedCache[tuple[str, str, bool], Any] = BoundedCache(max_translations)
        self.parses: dict[tuple[Any, ...], Any] = {}
        self.logic_parses: dict[tuple[Any, ...], Any] = {}
        self.max_translations = max_translations
        self.max_parses = max_parses
        self.max_derivations = max_derivations
        # per grammar object (by id, with a weak reference): template -> what its text depends on
        # (None: not cacheable)
        self.template_deps: dict[int, tuple[Any, dict[str, TemplateDeps | None]]] = {}
        # per game-state object (by id, with a weak reference that tells a reused id apart):
        # derivation key -> (text, objects keeping the ids in the key alive)
        self.derivations: dict[int, tuple[Any, dict]] = {}
        self.n_derive_hits = 0
        self.n_derive_misses = 0

    @contextmanager
    def active(self) -> Iterator[None]:
        import fast_downward
        import textworld.logic as tw_logic
        from textworld.envs.pddl import textgen

        original_translate = fast_downward.pddl2sas
        original_parse = textgen._parse_and_convert
        original_logic_parse = tw_logic._parse_and_convert
        original_derive = textgen.ContextSensitiveGrammar.derive
        translations, parses, logic_parses = self.translations, self.parses, self.logic_parses

        def translate(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
            if optimize and self.lazy_replan:
                optimize = False  # see replan_sas
            key = (domain, problem, bool(optimize))
            if key not in translations:
                translations.put(key, original_translate(domain, problem, verbose=verbose, optimize=optimize))
            return translations.get(key)

        def cached(store: dict, original: Any) -> Any:
            def parse(*args: Any, **kwargs: Any) -> Any:
                key = (args, tuple(sorted(kwargs.items())))
                if key not in store:
                    if len(store) >= self.max_parses:
                        store.clear()
                    store[key] = original(*args, **kwargs)
                return copy.deepcopy(store[key])
            return parse

        parse = cached(parses, original_parse)
        logic_parse = cached(logic_parses, original_logic_parse)


        memo = self

        def derive(grammar: Any, start: str, context: dict = {}) -> str:  # noqa: B006 - the engine's signature
            state = context.get("state") if isinstance(context, dict) else None
            if state is None or not isinstance(start, str):
                return original_derive(grammar, start, context)
            deps = memo._dependencies(grammar, start, parse, tw_logic.Rule.parse_conjunctive_query)
            variables = context.get("variables", {})
            part = derivation_key(deps, context.get("mapping", {}), variables) if deps is not None else None
            if part is None:
                return original_derive(grammar, start, context)
            preds = deps.predicates
            facts = frozenset(p for sig, props in state._facts.items() if sig.name in preds for p in props) \
                if preds else frozenset()
            key = (id(grammar), start, part, facts)
            per_state = memo._per_state(state)
            hit = per_state.get(key)
            if hit is not None:
                memo.n_derive_hits += 1
                return hit[0]
            memo.n_derive_misses += 1
            text = original_derive(grammar, start, context)
            if len(per_state) >= memo.max_derivations:
                per_state.clear()
            per_state[key] = (text, grammar, tuple(variables.values()))  # keeps the ids in the key alive
            return text

        fast_downward.pddl2sas = translate
        textgen._parse_and_convert = parse
        tw_logic._parse_and_convert = logic_parse
        textgen.ContextSensitiveGrammar.derive = derive
        try:
            yield
        finally:
            fast_downward.pddl2sas = original_translate
            textgen._parse_and_convert = original_parse
            tw_logic._parse_and_convert = original_logic_parse
            textgen.ContextSensitiveGrammar.derive = original_derive

    @staticmethod
    def _entry_of(table: dict[int, tuple[Any, dict]], obj: Any) -> dict:
        """The dict ``table`` keeps for ``obj`` (objects by identity, held by weak reference; entries
        of dead objects are pruned once the table has more than 64)."""
        entry = table.get(id(obj))
        if entry is None or entry[0]() is not obj:
            if len(table) > 64:
                for key in [k for k, v in table.items() if v[0]() is None]:
                    del table[key]
            entry = (weakref.ref(obj), {})
            table[id(obj)] = entry
        return entry[1]

    def _per_state(self, state: Any) -> dict:
        """The derivation cache of one game-state object (states are compared by identity)."""
        return self._entry_of(self.derivations, state)

    def _dependencies(self, grammar: Any, start: str, parse: Any, parse_query: Any) -> TemplateDeps | None:
        """:func:`template_dependencies` of ``start`` under ``grammar``, computed once per grammar object."""
        per_grammar = self._entry_of(self.template_deps, grammar)
        if start not in per_grammar:
            per_grammar[start] = template_dependencies(parse(start, rule_name="symbols"), parse_query,
                                                       lambda name: grammar._rules.get(name))
        return per_grammar[start]

    @staticmethod
    def replan_sas(domain: str, problem: str) -> str:
        """The planner's (optimised) SAS translation of a game, as ``PddlState`` computes it at load."""
        import fast_downward

        return fast_downward.pddl2sas(domain, problem, optimize=True)[1]
