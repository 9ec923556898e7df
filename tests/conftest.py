"""Shared fixtures for the data tests (a small synthetic corpus, two tokenizers, a CLI runner) and the
float tolerances every numeric comparison in the suite states the same way.

Two float computations of one quantity that differ only in rounding (another CPU's kernels, another
thread count, another batch composition, another library's order of operations) agree to about
``eps * sqrt(n) * scale``: each of the ``n`` terms summed into the value is rounded with a relative error
of at most ``eps``, and independent rounding errors add like a random walk, so their sum grows like
``sqrt(n)`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002, ch. 4; the worst
case, ``n * eps``, is far rarer). ``ROUNDING_MARGIN`` such units is the tolerance. A wrong mask, position or
weight moves a value by orders of magnitude more; a claim that holds exactly (the same computation twice,
a resumed run, a round trip through a file) is compared exactly instead, and says so.

How wide: the largest error in the suite, over torch's default kernels, ``OMP_NUM_THREADS=1``,
``ATEN_CPU_CAPABILITY=default`` and ``avx2``, and MKL held to AVX2 or SSE4.2 (``MKL_ENABLE_INSTRUCTIONS``,
as on CPUs without AVX-512), was 1.4 units (LTG-BERT against its reference formula); 4 leaves ~3x room.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from masklm.config import ModelConfig
from masklm.generation import GenerationConfig
from masklm.generation import generate as generate_with
from masklm.models import build_model
from masklm.tokenizer import train_tokenizer

# Few distinct stems with long words, so a small vocabulary must split words into several pieces.
_WORDS = ("the of and unbelievable extraordinary counterproductive hello world river mountain "
          "quickly wandering shepherds lantern whispering").split()


def make_documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return make_documents(60)


@pytest.fixture(scope="session")
def wordpiece_tokenizer(documents):
    return train_tokenizer(documents, kind="wordpiece", vocab_size=60, min_frequency=1)


@pytest.fixture(scope="session")
def bpe_tokenizer(documents):
    return train_tokenizer(documents, kind="bpe", vocab_size=300, min_frequency=2)


@pytest.fixture
def cli(monkeypatch):
    """Run ``masklm`` in-process with only the data commands registered -> exit status."""
    import masklm.cli

    monkeypatch.setattr(masklm.cli, "COMMAND_MODULES", ["corpus", "tokenizer", "data"])
    return masklm.cli.main


# ---- float tolerances ------------------------------------------------------------------------------

ROUNDING_MARGIN = 4.0


def forward_terms(config, positions: int | None = None, *, softmax: bool = False) -> int:
    """``n`` for a model's outputs: the longest sum behind each of them, the widest inner product (hidden
    size, FFN size, attention over ``positions``, by default the most the model takes), or the vocabulary
    when the value went through a softmax over it (log-probabilities, probabilities, cross-entropy).
    Rounding from earlier layers passes through LayerNorm and the residual sums of these 1-3 layer models
    without growing: the width sets the scale, not the depth."""
    positions = config.max_position_embeddings if positions is None else positions
    terms = max(config.hidden_size, config.intermediate_size, positions)
    return max(terms, config.vocab_size) if softmax else terms


def tolerance(scale: float, *, dtype=torch.float32, n: int = 1) -> float:
    """Absolute tolerance for a value of magnitude ``scale`` built from ``n`` rounded terms in ``dtype``
    (a torch dtype, or ``float`` for Python floats): ``ROUNDING_MARGIN * eps(dtype) * sqrt(n) * scale``."""
    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) else float(np.finfo(dtype).eps)
    return ROUNDING_MARGIN * eps * math.sqrt(n) * float(scale)


def approx(expected, *, dtype=torch.float32, n: int = 1, scale: float | None = None):
    """``pytest.approx`` at the rounding tolerance: relative to each expected number (sums of same-sign
    terms, losses), or absolute ``tolerance(scale)`` when ``scale`` names the magnitude the value was
    computed from (values that come out of a cancellation, or small members of a list)."""
    if scale is None:
        return pytest.approx(expected, rel=tolerance(1.0, dtype=dtype, n=n), abs=0.0)
    return pytest.approx(expected, rel=0.0, abs=tolerance(scale, dtype=dtype, n=n))


def _float64(x) -> torch.Tensor:
    """A float64 copy of a tensor, an array or (nested) lists of numbers."""
    return x.detach().double() if torch.is_tensor(x) else torch.from_numpy(np.array(x, dtype=np.float64))


@dataclass(frozen=True)
class Closeness:
    """The outcome of ``close``: true when ``diff <= tol``; its repr states both for a failing assert."""

    diff: float
    tol: float

    def __bool__(self) -> bool:
        return self.diff <= self.tol

    def __repr__(self) -> str:
        return f"max|a - b| = {self.diff:.3g} {'<=' if self else '>'} tolerance {self.tol:.3g}"


def close(actual, expected, *, dtype=torch.float32, n: int = 1, scale: float | None = None) -> Closeness:
    """Tensors or arrays (same shape) agree elementwise to ``tolerance(scale)``, where ``scale`` defaults to
    the largest magnitude in ``expected``: rounding scales with the tensor's size, not with each entry (an
    entry near 0 is usually a cancellation of larger terms)."""
    a, b = _float64(actual), _float64(expected)
    assert a.shape == b.shape, (a.shape, b.shape)
    if scale is None:
        scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return Closeness(diff, tolerance(scale, dtype=dtype, n=n))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    run faster on one thread, and far faster on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- generation tests (test_generation.py, test_generation_parallel.py) ----------------------------------

@pytest.fixture(scope="module")
def tok(request):
    """The WordPiece tokenizer the generation tests decode with."""
    return request.getfixturevalue("wordpiece_tokenizer")


def tiny(arch: str, tok, seed: int = 0) -> torch.nn.Module:
    """An untrained tiny model of ``arch`` for ``tok``'s vocabulary, in eval mode."""
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_preset(arch, "tiny", vocab_size=tok.vocab_size,
                                               max_position_embeddings=128)).eval()


def generate(model, tok, prompt=None, template=None, **settings) -> dict:
    """``masklm.generation.generate`` with the settings as keywords, as ``Pipeline.generate`` takes them."""
    return generate_with(model, tok, prompt, GenerationConfig(**settings), template=template)

