"""How closely features must agree: the issue's relative error of 1e-5 (float32)."""

import numpy as np

RELATIVE_ERROR = 1e-5


def assert_features_close(actual: np.ndarray, expected: np.ndarray) -> None:
  """Max abs difference within 1e-5 of the features' scale (max |expected|)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  scale = np.abs(expected).max()
  assert scale > 0, "all-zero features prove nothing"
  error = np.abs(actual - expected).max() / scale
  assert error <= RELATIVE_ERROR, f"relative error {error:.2e} > {RELATIVE_ERROR:.0e}"
