"""The one place that touches VirtualHome's ``evolving_graph`` simulator internals: loading it without
the Unity client, three small bug fixes, and the fast copy of an episode's state.

Loading: the ``virtualhome`` 2.3.0 wheel's top-level ``__init__`` edits ``sys.path`` and imports
the Unity client (``unity_simulator``), which fails without Unity's dependencies. The symbolic
simulator itself (``virtualhome/simulation/evolving_graph``) needs only numpy. We therefore never
import the ``virtualhome`` package: we locate it with :func:`importlib.util.find_spec` (which does
not execute it) and load the ``evolving_graph`` modules under a *private* package name
(``_steca_vh_evolving_graph_<n>``), skipping both ``__init__`` files. Each call of
:func:`load_simulator` with a different set of fixes gets its own private copy of the modules, so
the fixes (which patch those private copies) never leak into anyone else's import, and a test can
load an unfixed copy next to a fixed one.

The fixes (each one small; see the functions ``_fix_*``):

* ``find``: ``JoinedExecutor.execute`` does not accept the ``(modify, in_place)`` arguments that
  ``FindExecutor`` passes on, so ``[FIND]`` of an object the character is not close to raises
  ``TypeError``. The fix replaces the module's walk-then-find executor by a joined executor that
  accepts and forwards them.
* ``char_state``: ``EnvironmentState.get_char_node`` returns the character node of the *base*
  graph, so states set during a run (``SITTING``, ``LYING``) are invisible to later actions
  (``[SLEEP]`` after ``[LIE]`` fails). The fix returns the state's current version of that node.
* ``putoff``: ``PutOffExecutor.execute`` calls ``check_putoff`` without ``char_index`` and
  ``check_putoff`` calls ``_get_character_node`` with one argument too many, so every ``[PUTOFF]``
  raises ``TypeError``. The fix installs an executor whose check passes the character index.

The fixes have no public-API alternative (they repair the simulator); with an untested version a fix
whose target is missing is skipped with a warning naming it.

State copies (:func:`copy_state`): the fast path copies the state's overlay dicts over the shared
base graph (O(changes)); the public path is the simulator's own copy, ``state.change_state([],
in_place=False)`` (a deep copy of the same overlays). :func:`internals_supported` checks the installed
version against :data:`TESTED_VERSIONS`; with another one the public path is taken and one warning is
logged. ``tests/test_evolving_graph_adapter.py`` plays the same episodes both ways and compares.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from eval_agent.package_versions import untested_versions

logger = logging.getLogger(__name__)

TESTED_VERSIONS: dict[str, tuple[str, ...]] = {"virtualhome": ("2.3.0",)}
"""The versions whose internals the tests cover (``scripts/install.sh`` pins ``virtualhome==2.3.0``)."""

ALL_FIXES: frozenset[str] = frozenset({"find", "char_state", "putoff"})
_MODULES = ("common", "scripts", "environment", "execution")
_counter = itertools.count()
_cache: dict[frozenset[str], "Simulator"] = {}


@dataclass(frozen=True)
class Simulator:
    """The loaded simulator modules (a private copy) and the fixes applied to them."""

    environment: types.ModuleType
    execution: types.ModuleType
    scripts: types.ModuleType
    fixes: frozenset[str]


@functools.cache
def internals_supported() -> bool:
    """True when the installed ``virtualhome`` is a version the fast path was tested with; otherwise
    logs one warning (once per process) and :func:`copy_state` takes the public-API path."""
    wrong = untested_versions(TESTED_VERSIONS)
    if wrong:
        logger.warning("evolving_graph internals untested with %s: VirtualHome states are copied through the "
                       "public API (slower, same results)", "; ".join(wrong))
    return not wrong


def copy_state(state: Any, fast: bool | None = None) -> Any:
    """An independent copy of an ``EnvironmentState`` (the base graph stays shared: nodes are immutable).

    ``fast`` (default :func:`internals_supported`): copy the overlay dicts directly; otherwise the
    simulator's public copy, ``change_state([], in_place=False)``. Both give states that execute the
    same; the public one starts ``get_max_node_id`` again from the base graph, as every state that
    ``change_state`` returns does (no action the environment runs adds nodes).
    """
    if not (internals_supported() if fast is None else fast):
        return state.change_state([], in_place=False)
    new = type(state)(state._graph, state._name_equivalence, state.instance_selection)
    new._new_nodes = dict(state._new_nodes)
    new._removed_edges_from = {k: set(v) for k, v in state._removed_edges_from.items()}
    new._new_edges_from = {k: set(v) for k, v in state._new_edges_from.items()}
    new._script_objects = dict(state._script_objects)
    new.executor_data = dict(state.executor_data)
    new._max_node_id = state._max_node_id
    return new


def evolving_graph_dir() -> Path:
    """The ``evolving_graph`` folder of the installed ``virtualhome`` package (not imported)."""
    spec = importlib.util.find_spec("virtualhome")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'virtualhome' package (2.3.0) is not installed; "
                          "install it with: pip install --no-deps virtualhome==2.3.0")
    folder = Path(list(spec.submodule_search_locations)[0]) / "simulation" / "evolving_graph"
    if not (folder / "execution.py").exists():
        raise ImportError(f"{folder}: no evolving_graph/execution.py in the installed virtualhome package")
    return folder


def load_simulator(fixes: Iterable[str] = ALL_FIXES) -> Simulator:
    """Load (once per set of fixes) a private copy of the evolving-graph modules with ``fixes`` applied."""
    key = frozenset(fixes)
    unknown = key - ALL_FIXES
    if unknown:
        raise ValueError(f"unknown simulator fixes {sorted(unknown)}; known: {sorted(ALL_FIXES)}")
    if key in _cache:
        return _cache[key]
    folder = evolving_graph_dir()
    pkg_name = f"_steca_vh_evolving_graph_{next(_counter)}"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = [str(folder)]  # a namespace for the relative imports; its __init__ is not run
    sys.modules[pkg_name] = pkg
    mods: dict[str, types.ModuleType] = {}
    for name in _MODULES:
        full = f"{pkg_name}.{name}"
        spec = importlib.util.spec_from_file_location(full, folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)
        setattr(pkg, name, mod)
        mods[name] = mod
    sim = Simulator(mods["environment"], mods["execution"], mods["scripts"], key)
    for name, fix in (("find", _fix_find), ("char_state", _fix_char_state), ("putoff", _fix_putoff)):
        if name in key:
            try:
                fix(sim)
            except AttributeError as e:  # an untested virtualhome without the fixed code
                if internals_supported():
                    raise
                logger.warning("evolving_graph fix %r not applied: %s", name, e)
    _cache[key] = sim
    return sim


def _fix_find(sim: Simulator) -> None:
    """``[FIND]`` of a distant object: walk there, then find (forwarding ``modify``/``in_place``)."""
    ex = sim.execution

    class ForwardingJoinedExecutor(ex.JoinedExecutor):
        def execute(self, script: Any, state: Any, info: Any, char_index: int,
                    modify: bool = True, in_place: bool = False):
            for e in self.executors:
                yield from e.execute(script, state, info, char_index, modify, in_place)

    ex._walk_find_executor = ForwardingJoinedExecutor(ex.WalkExecutor(), ex._FindExecutor())


def _fix_char_state(sim: Simulator) -> None:
    """``get_char_node`` yields the character as the *current* state sees it (with SITTING/LYING)."""
    env = sim.environment

    def get_char_node(self: Any, char_index: int):
        for base_node in self._graph.get_char_node(char_index):
            yield self.get_node(base_node.id)

    env.EnvironmentState.get_char_node = get_char_node


def _fix_putoff(sim: Simulator) -> None:
    """``[PUTOFF]``: check that the clothes are on the character, then take them off."""
    ex = sim.execution
    Relation, Property = sim.environment.Relation, sim.environment.Property

    class FixedPutOffExecutor(ex.PutOffExecutor):
        def execute(self, script: Any, state: Any, info: Any, char_index: int,
                    modify: bool = True, in_place: bool = False):
            line = script[0]
            info.set_current_line(line)
            node = state.get_state_node(line.object())
            if node is None:
                info.object_found_error()
                return
            char_node = ex._get_character_node(state, char_index)
            if not state.has_edge(node, Relation.ON, char_node):
                info.error("{} is not on {}", node, char_node)
                return
            if Property.CLOTHES not in node.properties:
                info.error("{} is not clothes", node)
                return
            if not modify:
                yield state
                return
            yield state.change_state([sim.environment.DeleteEdges(
                sim.environment.NodeInstance(node), [Relation.ON], sim.environment.CharacterNode(char_index))],
                in_place=in_place)

    ex.ScriptExecutor._action_executors[sim.scripts.Action.PUTOFF] = FixedPutOffExecutor()
