"""Text generation from masked LMs: Mask-Predict, confidence (MaskGIT/LLaDA), MDLM diffusion, and
left-to-right decoding with a key/value cache. ``generate(model, tokenizer, prompt, ...)`` is the entry
point (``pipe.generate`` and ``masklm generate`` call it); see docs/generation.md.
"""

from __future__ import annotations

from masklm.generation.api import STRATEGIES, check_causal, generate

__all__ = ["STRATEGIES", "check_causal", "generate"]
