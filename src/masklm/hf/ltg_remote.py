"""What makes an LTG-BERT / GPT-BERT model folder load in Hugging Face transformers.

Every ``ltg-bert`` / ``gpt-bert`` folder that masklm writes also carries the two standalone files in
``masklm/hf/remote/`` and an ``auto_map`` in ``config.json``, so
``transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)`` (and ``AutoModel``)
load it without masklm installed. Parameter names are masklm's; the MLM decoder is the word embedding,
stored once.

A leaf module (nothing of masklm's imported), so ``masklm.modeldir`` can use it when it writes a folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

LTG_ARCHS = ("ltg-bert", "gpt-bert")
REMOTE_DIR = Path(__file__).with_name("remote")
REMOTE_FILES = ("configuration_masklm_ltg.py", "modeling_masklm_ltg.py")
MODEL_TYPE = "masklm-ltg"
AUTO_MAP = {
    "AutoConfig": "configuration_masklm_ltg.MaskLMLtgConfig",
    "AutoModel": "modeling_masklm_ltg.MaskLMLtgModel",
    "AutoModelForMaskedLM": "modeling_masklm_ltg.MaskLMLtgForMaskedLM",
}
ARCHITECTURES = ["MaskLMLtgForMaskedLM"]


def is_ltg_config(config_json: dict[str, Any]) -> bool:
    return config_json.get("arch") in LTG_ARCHS


def add_hf_fields(config_json: dict[str, Any]) -> dict[str, Any]:
    """``config_json`` plus model_type, architectures and auto_map (masklm's reader ignores all three)."""
    return {**config_json, "model_type": MODEL_TYPE, "architectures": list(ARCHITECTURES),
            "auto_map": dict(AUTO_MAP)}


def copy_remote_files(folder: str | Path) -> None:
    """Copy the standalone configuration/modeling files into ``folder``."""
    for name in REMOTE_FILES:
        shutil.copyfile(REMOTE_DIR / name, Path(folder) / name)


__all__ = ["AUTO_MAP", "REMOTE_FILES", "add_hf_fields", "copy_remote_files", "is_ltg_config"]
