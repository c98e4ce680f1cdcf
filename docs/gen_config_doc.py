"""Regenerate docs/configuration.md from the config dataclasses' field docstrings.

Run: ``PYTHONPATH=src python docs/gen_config_doc.py`` (or with longssm installed).
"""

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

from longssm.config import DataConfig, TrainConfig
from longssm.models.config import ModelConfig

HEADER = """# Configuration reference

A run config is a TOML or YAML file with up to three tables, `[model]`, `[data]` and `[train]`;
every key is optional. Override any key from the command line with a dotted flag:
`longssm train configs/mamba-previous.toml --train.policy=zero --data.seq_len=64`.
Unknown keys and invalid values stop the run with a one-line error (exit code 2). The resolved
config is written to `<run>/config.json` and into every checkpoint.

This page is generated from the dataclasses' field docstrings (`python docs/gen_config_doc.py`).
"""


def field_docs(cls) -> dict[str, str]:
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def render() -> str:
    """The whole page as text."""
    lines = [HEADER]
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        docs = field_docs(cls)
        lines += [f"## [{section}]", "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"| `{f.name}` | `{default!r}` | {docs.get(f.name, '')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    out = Path(__file__).with_name("configuration.md")
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
