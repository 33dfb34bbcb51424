"""Tiny T5 configurations for the encoder and decoder pass tests: T5 (ReLU, tied embeddings)
and Flan-T5 (gated GELU, untied output)."""

from transformers import T5Config

PAD, START = 0, 0
CONFIGS = {
    "t5": T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="relu", dropout_rate=0.0, decoder_start_token_id=START,
        pad_token_id=PAD,
    ),
    "flan-t5": T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=START, pad_token_id=PAD,
    ),
}  # fmt: skip
