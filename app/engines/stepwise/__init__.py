"""The continuous engine: transformers models decoded step by step with their KV cache owned
here, so sequences join and leave a running batch at every step (see `engine.py`)."""
