"""Memoisation of two pure functions of the TextWorld PDDL engine, active only inside a block.

* fast-downward's ``pddl2sas``: ``PddlEnv.load`` and ``PddlEnv.reset`` both translate the same
  domain and problem (twice each: plain, and optimised for the planner);
* TextWorld's grammar-string parser (``textgen._parse_and_convert``, a TatSu parse): every step
  re-parses the command template of every applicable action and every feedback rule, and every
  game re-parses the same grammar rules.

Both depend only on their text arguments. Parsed symbols are deep-copied out of the cache because
the engine mutates them. With ``lazy_replan`` the planner's optimised translation, which loading
a game always computes but only replanning uses, is not computed at load: the plain translation
stands in for it, and the caller translates for the planner when it plans
(:meth:`EngineMemo.replan_sas`). The functions are swapped in for the duration of a ``with memo.active():``
block and put back afterwards, so code outside the block sees the engine unchanged; the engine's
outputs are identical (tests compare replays with and without the memo).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator


class EngineMemo:
    """Caches for one environment instance (one process, one game at a time)."""

    def __init__(self, max_translations: int = 8, max_parses: int = 20000, lazy_replan: bool = True):
        self.lazy_replan = lazy_replan
        self.translations: dict[tuple[str, str, bool], Any] = {}
        self.parses: dict[tuple[Any, ...], Any] = {}
        self.max_translations = max_translations
        self.max_parses = max_parses

    @contextmanager
    def active(self) -> Iterator[None]:
        import fast_downward
        from textworld.envs.pddl import textgen

        original_translate = fast_downward.pddl2sas
        original_parse = textgen._parse_and_convert
        translations, parses = self.translations, self.parses

        def translate(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
            if optimize and self.lazy_replan:
                optimize = False  # see replan_sas
            key = (domain, problem, bool(optimize))
            if key not in translations:
                if len(translations) >= self.max_translations:
                    translations.pop(next(iter(translations)))
                translations[key] = original_translate(domain, problem, verbose=verbose, optimize=optimize)
            return translations[key]

        def parse(*args: Any, **kwargs: Any) -> Any:
            key = (args, tuple(sorted(kwargs.items())))
            if key not in parses:
                if len(parses) >= self.max_parses:
                    parses.clear()
                parses[key] = original_parse(*args, **kwargs)
            return copy.deepcopy(parses[key])

        fast_downward.pddl2sas = translate
        textgen._parse_and_convert = parse
        try:
            yield
        finally:
            fast_downward.pddl2sas = original_translate
            textgen._parse_and_convert = original_parse

    @staticmethod
    def replan_sas(domain: str, problem: str) -> str:
        """The planner's (optimised) SAS translation of a game, as ``PddlState`` computes it at load."""
        import fast_downward

        return fast_downward.pddl2sas(domain, problem, optimize=True)[1]
