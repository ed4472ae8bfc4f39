"""TensorFlow, imported on first use: `from lazy_tensorflow import tf`.

TensorFlow is what the original code ran: the tests compare our decoder,
resize, offsets and file formats with it. Importing it takes seconds, and
every test process imports every test file when it collects the tests, so an
import at the top of a file would cost each process those seconds.
"""

import importlib


class _LazyTensorFlow:
  """Stands for the `tensorflow` module; imports it when a public name is first read."""

  def __getattr__(self, name: str):
    if name.startswith("_"):  # pytest looks for fixture markers on every module-level name.
      raise AttributeError(name)
    return getattr(importlib.import_module("tensorflow"), name)


tf = _LazyTensorFlow()
