"""Text backbone: word embeddings, 1x1 Conv1D, ReLU, max over words.

Module `.../text_module`. Takes int32 word ids `[B, N]` (N words, ids in
[0, 65536)) and returns float32 `[B, 2048]`.
"""

import haiku as hk
import jax
import jax.numpy as jnp

VOCAB_SIZE = 65536
WORD_DIM = 300
OUTPUT_DIM = 2048


class TextModule(hk.Module):
  """Sentence representation: max over words of ReLU(Conv1D_1x1(embedding))."""

  def __init__(self, name: str = "text_module"):
    super().__init__(name=name)
    self._embed = hk.Embed(VOCAB_SIZE, WORD_DIM, name="embed")
    self._conv = hk.Conv1D(OUTPUT_DIM, 1, name="text_conv1")

  def __call__(self, word_ids: jax.Array) -> jax.Array:
    """int32 [B, N] -> float32 [B, 2048]."""
    words = jax.lax.stop_gradient(self._embed(word_ids))  # Embeddings stay frozen.
    return jnp.max(jax.nn.relu(self._conv(words)), axis=1)
