"""The remote-code modeling file that LTG-BERT / GPT-BERT folders ship for transformers is generated from
masklm's model modules (``masklm.hf.remote_gen``): it must equal a fresh rendering, say so in its first
line, and import nothing from masklm. (tests/test_ltg_hf.py loads it in transformers.)"""

from __future__ import annotations

import ast

from masklm.hf.remote_gen import COMMAND, HEADER, TARGET, render


def test_committed_remote_file_is_the_generated_one():
    committed = TARGET.read_text(encoding="utf-8")
    assert committed == render(), f"{TARGET} is stale or edited by hand; run `{COMMAND}` and commit the result"
    assert committed.splitlines()[0] == HEADER
    assert HEADER.endswith("Do not edit it by hand.") and COMMAND in HEADER


def test_remote_file_is_standalone():
    tree = ast.parse(TARGET.read_text(encoding="utf-8"))
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert modules and not [m for m in modules if m.startswith("masklm")]
    top = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    # the maths is masklm's, copied in: the attention and the encoder are there, the wrapper on top
    assert {"Attention", "Encoder", "build_attention_mask", "MaskLMLtgModel", "MaskLMLtgForMaskedLM"} <= top
