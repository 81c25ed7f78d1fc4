"""Join the part files of a sharded sampling stage into one output (``sampling/common.sh`` calls it).

    python -m steca.sampling.join_parts --output OUT.jsonl PART0.jsonl PART1.jsonl ...

The records (complete, newline-terminated lines only) are written in one canonical order, by
``(id, iteration)``, so the joined file is the same bytes whatever the number of parts and
whatever order the records finished in (the parts write them as they finish). A key found twice
is an error naming both files: it would become a training pair with a repeated id.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from eval_agent.storage import check_not_input, read_jsonl_objects, write_jsonl_atomic

logger = logging.getLogger(__name__)


def record_key(obj: Any) -> tuple[str, int]:
    """The sort and uniqueness key of a step record: ``(id, iteration)``."""
    if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("iteration"), int):
        raise ValueError(f"not a step record (needs 'id' and an integer 'iteration'): {str(obj)[:200]}")
    return str(obj["id"]), obj["iteration"]


def join_parts(parts: Sequence[str | Path], output: str | Path) -> int:
    """Write the records of ``parts`` to ``output`` sorted by :func:`record_key`; returns their number."""
    check_not_input(output, parts)
    where: dict[tuple[str, int], str] = {}
    records = []
    for part in parts:
        for obj in read_jsonl_objects(part):
            key = record_key(obj)
            if key in where:
                raise ValueError(f"record {key} is in {where[key]} and in {part}: the parts overlap")
            where[key] = str(part)
            records.append(obj)
    records.sort(key=record_key)
    write_jsonl_atomic(output, records)
    return len(records)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="join the part files of a sampling stage")
    p.add_argument("--output", required=True)
    p.add_argument("parts", nargs="+")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n = join_parts(args.parts, args.output)
    print(f"{n} records in {args.output}")
    return n


if __name__ == "__main__":
    main()
