"""TensorFlow, imported without its start-up lines on stderr.

Importing TensorFlow 2.21 writes oneDNN and CPU-feature notices through absl
before its logging is set up, so `TF_CPP_MIN_LOG_LEVEL` does not silence
them. They are dropped by pointing file descriptor 2 at /dev/null for the
import alone; Python errors raised by the import still propagate, and what
is logged afterwards still shows. `MMV_VERBOSE=1` keeps the notices.

  from mmv_core.quiet_tensorflow import tf
"""

import contextlib
import os
import sys

VERBOSE_ENV = "MMV_VERBOSE"


@contextlib.contextmanager
def _stderr_to_devnull():
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


with (contextlib.nullcontext() if os.environ.get(VERBOSE_ENV) else _stderr_to_devnull()):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,unused-import
