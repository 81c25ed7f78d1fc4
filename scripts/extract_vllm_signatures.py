"""Read, from a vLLM release's own source, the signatures that eval_agent/agents/vllm_backend.py calls, and
write them to tests/vllm_signatures.json (tests/test_vllm_signatures.py checks our calls against it offline).

    pip download --no-deps --only-binary=:all: vllm==0.32.0 -d WHEEL_DIR
    python scripts/extract_vllm_signatures.py WHEEL_DIR/vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl

Nothing is imported or run from the wheel (it needs CUDA): its Python files are parsed with ``ast``.
Recorded: ``LLM.__init__`` and ``LLM.generate`` parameters (and whether extra keywords are accepted),
the attributes ``LLM.__init__`` sets, ``EngineArgs`` fields (where ``LLM``'s extra keywords go),
``SamplingParams`` fields, ``TokensPrompt`` keys, ``LLMEngine``'s ``model_config`` attribute, and the
environment variables vLLM reads (the keys of ``environment_variables`` in ``vllm/envs.py``).
"""
from __future__ import annotations

import argparse
import ast
import json
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "vllm_signatures.json"
FILES = {"llm": "vllm/entrypoints/llm.py", "sampling": "vllm/sampling_params.py", "inputs": "vllm/inputs/llm.py",
         "engine_args": "vllm/engine/arg_utils.py", "engine": "vllm/v1/engine/llm_engine.py",
         "version": "vllm/_version.py", "envs": "vllm/envs.py"}


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _params(fn: ast.FunctionDef) -> dict[str, Any]:
    a = fn.args
    positional = [x.arg for x in a.posonlyargs + a.args][1:]  # without self
    return {"positional": positional, "keyword_only": [x.arg for x in a.kwonlyargs],
            "var_keyword": a.kwarg is not None}


def _fields(cls: ast.ClassDef) -> list[str]:
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def _self_attributes(fn: ast.FunctionDef) -> list[str]:
    out = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
                and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
    return sorted(out)


def _env_variables(tree: ast.Module) -> list[str]:
    """The string keys of the module-level ``environment_variables`` dict."""
    for node in tree.body:
        target = None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign):
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "environment_variables" and isinstance(node.value, ast.Dict):
            return sorted(k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    raise ValueError("vllm/envs.py: no environment_variables dict")


def extract(sources: dict[str, str]) -> dict[str, Any]:
    trees = {k: ast.parse(v) for k, v in sources.items()}
    llm = _class(trees["llm"], "LLM")
    version_ns: dict[str, Any] = {}
    exec(compile(trees["version"], "_version.py", "exec"), version_ns)  # noqa: S102 - literal assignments only
    return {
        "vllm": ".".join(str(x) for x in version_ns["version_tuple"][:3]),
        "LLM.__init__": _params(_method(llm, "__init__")),
        "LLM.attributes": _self_attributes(_method(llm, "__init__")),
        "LLM.generate": _params(_method(llm, "generate")),
        "LLM.get_tokenizer": _params(_method(llm, "get_tokenizer")),
        "EngineArgs": _fields(_class(trees["engine_args"], "EngineArgs")),
        "SamplingParams": _fields(_class(trees["sampling"], "SamplingParams")),
        "TokensPrompt": _fields(_class(trees["inputs"], "TokensPrompt")),
        "LLMEngine.attributes": _self_attributes(_method(_class(trees["engine"], "LLMEngine"), "__init__")),
        "envs": _env_variables(trees["envs"]),
    }


def read_sources(path: Path) -> dict[str, str]:
    """The recorded files' text from a wheel (zip) or an unpacked source tree."""
    if path.is_dir():
        return {k: (path / f).read_text() for k, f in FILES.items()}
    with zipfile.ZipFile(path) as z:
        return {k: z.read(f).decode() for k, f in FILES.items()}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a vllm wheel, or a directory holding the vllm package")
    ap.add_argument("--output", default=str(OUTPUT))
    args = ap.parse_args(argv)
    data = extract(read_sources(Path(args.source)))
    out = Path(args.output)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    main()
