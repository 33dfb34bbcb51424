"""The runtimes a model can run on: what conversion targets and the model store keys on."""

from __future__ import annotations

import enum


class EngineKind(str, enum.Enum):
    """The engines a converted (or unconverted) model can run on."""

    CTRANSLATE2 = "ct2"
    ONNX = "onnx"
    TRANSFORMERS = "transformers"
    CONTINUOUS = "continuous"
