"""Interoperability with Hugging Face and reference layouts.

``bert``: import BERT folders, export masklm BERT folders. ``ltg_remote``: the remote-code files that let
transformers load LTG-BERT / GPT-BERT folders. ``ltg_import`` and ``ltg_reference``: reference LTG-BERT /
GPT-BERT checkpoints -> masklm model folders. (No imports here: ``masklm.modeldir`` uses the leaf
``ltg_remote``, and ``bert`` imports ``modeldir``.)
"""
