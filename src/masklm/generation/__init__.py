"""Text generation from masked LMs: Mask-Predict, confidence (MaskGIT/LLaDA), MDLM diffusion, threshold
commits in cached blocks (Fast-dLLM), self-speculative decoding (masked drafts, causal verification), and
left-to-right decoding with a key/value cache; repetition controls for all of them. ``generate(model, tokenizer, prompt, GenerationConfig(...))``
is the entry point (``pipe.generate`` and ``masklm generate`` call it); see docs/generation.md.
"""

from __future__ import annotations

from masklm.generation.api import CALL_FIELDS, check_causal, generate
from masklm.generation.config import REQUEST_FIELDS, STRATEGIES, GenerationConfig

__all__ = ["CALL_FIELDS", "REQUEST_FIELDS", "STRATEGIES", "GenerationConfig", "check_causal", "generate"]
