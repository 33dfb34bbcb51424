"""Engines: one module per runtime (CTranslate2, ONNX Runtime, transformers) behind `Engine`."""
