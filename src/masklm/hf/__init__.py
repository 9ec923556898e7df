"""Interoperability with Hugging Face layouts: import BERT folders, export masklm BERT folders."""

from __future__ import annotations

from masklm.hf.bert import export_bert, import_bert

__all__ = ["export_bert", "import_bert"]
