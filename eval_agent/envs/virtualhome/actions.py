"""STeCa's VirtualHome text actions: parse ``walk to kitchen`` into a script action and object names,
and write a program line back as text.

Matching is case-insensitive, ignores a trailing period and extra spaces; object names are written
with spaces (``clothes pants``) or underscores and map to class names (``clothes_pants``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from eval_agent.envs.virtualhome.task_files import ProgramLine

# (text template, script action). Order matters: the first matching template wins.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("walk to {0}", "WALK"), ("run to {0}", "RUN"), ("find {0}", "FIND"),
    ("put on {0}", "PUTON"), ("take off {0}", "PUTOFF"), ("put off {0}", "PUTOFF"),
    ("put back {0}", "PUTOBJBACK"), ("put {0} on {1}", "PUTBACK"), ("put {0} into {1}", "PUTIN"),
    ("put {0} in {1}", "PUTIN"), ("pour {0} into {1}", "POUR"), ("pour {0} in {1}", "POUR"),
    ("switch on {0}", "SWITCHON"), ("switch off {0}", "SWITCHOFF"), ("turn on {0}", "SWITCHON"),
    ("turn off {0}", "SWITCHOFF"), ("turn to {0}", "TURNTO"), ("look at {0}", "LOOKAT"),
    ("point at {0}", "POINTAT"), ("sit on {0}", "SIT"), ("sit in {0}", "SIT"), ("lie on {0}", "LIE"),
    ("lie in {0}", "LIE"), ("stand up", "STANDUP"), ("wake up", "WAKEUP"), ("sleep", "SLEEP"),
    ("type on {0}", "TYPE"), ("plug in {0}", "PLUGIN"), ("plug out {0}", "PLUGOUT"),
    ("unplug {0}", "PLUGOUT"), ("grab {0}", "GRAB"), ("open {0}", "OPEN"), ("close {0}", "CLOSE"),
    ("drink {0}", "DRINK"), ("watch {0}", "WATCH"), ("wipe {0}", "WIPE"), ("wash {0}", "WASH"),
    ("rinse {0}", "RINSE"), ("scrub {0}", "SCRUB"), ("cut {0}", "CUT"), ("eat {0}", "EAT"),
    ("move {0}", "MOVE"), ("push {0}", "PUSH"), ("pull {0}", "PULL"), ("release {0}", "RELEASE"),
    ("drop {0}", "DROP"), ("touch {0}", "TOUCH"), ("greet {0}", "GREET"), ("read {0}", "READ"),
    ("squeeze {0}", "SQUEEZE"),
)
# the text STeCa's records use for each script action (first template of that action)
TEXT_OF_ACTION: dict[str, str] = {}
for _tpl, _act in TEMPLATES:
    TEXT_OF_ACTION.setdefault(_act, _tpl)


def _compile(tpl: str) -> re.Pattern[str]:
    pattern = re.escape(tpl).replace(r"\{0\}", "(?P<a>.+?)").replace(r"\{1\}", "(?P<b>.+?)")
    return re.compile(f"^{pattern}$")


_COMPILED = tuple((_compile(t), a) for t, a in TEMPLATES)


@dataclass(frozen=True)
class TextAction:
    """A parsed text action: script ``action`` and 0-2 object class names."""

    action: str
    names: tuple[str, ...]


def normalize_name(text: str) -> str:
    """``Clothes pants`` -> ``clothes_pants``."""
    return re.sub(r"\s+", "_", text.strip().lower().strip("'\"").removeprefix("the ").strip())


def parse_text_action(text: str) -> TextAction | None:
    """Parse ``put plate on table`` -> ``TextAction("PUTBACK", ("plate", "table"))``; None if unknown."""
    t = re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()
    for pattern, action in _COMPILED:
        m = pattern.match(t)
        if m:
            names = tuple(normalize_name(v) for v in m.groupdict().values() if v is not None)
            if any(not n for n in names):
                return None
            return TextAction(action, names)
    return None


def program_line_to_text(line: ProgramLine) -> str:
    """``[PUTBACK] <plate> (1) <table> (2)`` -> ``Put plate on table`` (STeCa's action text)."""
    tpl = TEXT_OF_ACTION.get(line.action)
    if tpl is None:
        raise ValueError(f"no text form for action {line.action!r}")
    names = [n.replace("_", " ") for n, _ in line.params]
    text = tpl.format(*names)
    return text[:1].upper() + text[1:]
