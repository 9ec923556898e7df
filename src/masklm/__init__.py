"""masklm: masked language models, from raw text to serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

from masklm.config import ModelConfig
from masklm.errors import ConfigError, DataError, InputError, MaskLMError, ModelDirError
from masklm.version import __version__

if TYPE_CHECKING:
    from masklm.training.config import TrainConfig


def build_model(config: ModelConfig):
    """Turn a ModelConfig into a ``torch.nn.Module`` following the forward contract."""
    # lazy: `import masklm` (and so every CLI start) does not load torch until a model is built
    from masklm.models import build_model as _build

    return _build(config)


def load(path, device=None, dtype=None, compile=False):
    """Load a model folder into a pipeline (fill_mask, score, embed, generate); ``dtype`` float32, bfloat16
    or float16; ``compile`` torch.compile the model."""
    # lazy: the inference stack loads only when a model is loaded
    from masklm.inference.pipeline import load as _load

    return _load(path, device=device, dtype=dtype, compile=compile)


def __getattr__(name: str):
    if name == "TrainConfig":
        # lazy: checking a TrainConfig needs torch (optimizers, objectives); `import masklm` stays light
        from masklm.training.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'masklm' has no attribute {name!r}")


def train(config: TrainConfig):
    """Run a training job; returns the run folder."""
    # lazy: the training stack loads only when a run starts
    from masklm.training.trainer import train as _train

    return _train(config)


__all__ = [
    "ConfigError", "DataError", "InputError", "MaskLMError", "ModelConfig", "ModelDirError",
    "TrainConfig", "build_model", "load", "train", "__version__",
]
