"""Importing TensorFlow without the C++ start-up chatter on stderr (it breaks JSON logs)."""

from __future__ import annotations

import os
import sys
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """Import TensorFlow once, with file descriptor 2 silenced during the import.

    TensorFlow's native code writes absl/oneDNN notices straight to fd 2 before any
    Python logging is set up; call this early, from the main thread, before other threads log.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow

        tensorflow.constant(0.0)  # the first op prints a notice too
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow
