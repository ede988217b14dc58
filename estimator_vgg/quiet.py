"""TensorFlow's start-up and deprecation chatter, kept out of the user's way (a light module).

`import estimator_vgg` (any of its modules) calls quiet_tensorflow() before TensorFlow is first
imported, so a script or a notebook that builds the Estimator and predicts shows the job's own
warnings (synthetic weights, precision hints) and none of TensorFlow's log:

- TF_CPP_MIN_LOG_LEVEL=3, set only when the variable is unset and TensorFlow is not imported
  yet: TensorFlow's C++ reads it once, at its first log line, during `import tensorflow`.
  It hides the C++ start-up lines (the "Unable to register cuDNN factory" lines marked E, "Could
  not find TensorRT", the oneDNN and CPU-instruction notices, "MLIR V1 optimization pass").
  Errors still reach the user as Python exceptions, unchanged.
- The `tensorflow` Python logger at ERROR, set only when nobody set its level (NOTSET): this
  hides the "... is deprecated and will be removed ... Use tf.keras instead" warnings and the
  Estimator's INFO lines. In an interactive session (Jupyter, `python -i`) TensorFlow sets that
  logger to INFO itself when it is imported; tensorflow_imported() (called by the modules that
  import TensorFlow) puts it back to ERROR once, the first time it sees that default. A level
  the user set before (seen by before_tensorflow(), which the package's lazy names call) or
  sets afterwards is never touched.

One switch turns it all off: ESTIMATOR_VGG_VERBOSE=1 in the environment before estimator_vgg is
imported (the CLI's -v sets it, and calls set_verbose(), which undoes what was set here). Where
TensorFlow was imported before estimator_vgg, its C++ log level is already fixed: its start-up
lines were printed and later C++ lines (the MLIR notice) still are; the Python warnings are still
hidden. docs/notebooks.md says the same for users.
"""
from __future__ import annotations

import logging
import os
import sys

SWITCH = "ESTIMATOR_VGG_VERBOSE"
CPP_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
_TF = "tensorflow"

# What this module set, so set_verbose() undoes exactly that and nothing the user set.
_set_cpp = False
_owns_logger = False   # the tensorflow logger's level is ours to keep at ERROR
_settled = False       # TensorFlow has configured its logger and we have looked at it once


def verbose() -> bool:
    """True when the user asked for TensorFlow's own log (ESTIMATOR_VGG_VERBOSE set, not 0)."""
    return os.environ.get(SWITCH, "").strip().lower() not in ("", "0", "false", "no")


def _tf_imported() -> bool:
    return _TF in sys.modules


def _tensorflows_default(logger: logging.Logger) -> bool:
    """The level TensorFlow 2.15's get_logger() gives its logger in an interactive session:
    INFO, with its own stream handler to stdout; not a level the user chose."""
    interactive = hasattr(sys, "ps1") or bool(sys.flags.interactive)
    return (interactive and logger.level == logging.INFO and
            any(type(h) is logging.StreamHandler and getattr(h, "stream", None) is sys.stdout
                for h in logger.handlers))


def quiet_tensorflow() -> None:
    """Quiet TensorFlow's log unless the switch is on; never overrides a value the user set."""
    global _set_cpp, _owns_logger
    if verbose():
        return
    if CPP_LEVEL not in os.environ and not _tf_imported():
        os.environ[CPP_LEVEL] = "3"
        _set_cpp = True
    logger = logging.getLogger(_TF)
    if logger.level == logging.NOTSET or (_tf_imported() and _tensorflows_default(logger)):
        logger.setLevel(logging.ERROR)
        _owns_logger = True


def before_tensorflow() -> None:
    """Called before a name of the package that imports TensorFlow is first used: a level the
    user gave the tensorflow logger since quiet_tensorflow() is theirs, even when it equals
    the INFO that TensorFlow's import will set in an interactive session."""
    global _owns_logger
    if _owns_logger and not _tf_imported() and logging.getLogger(_TF).level != logging.ERROR:
        _owns_logger = False


def tensorflow_imported() -> None:
    """Called by the modules that import TensorFlow, right after: TensorFlow configures its
    logger when it is imported (INFO in an interactive session); put the level we own back."""
    global _settled, _owns_logger
    if _settled or verbose() or not _owns_logger or not _tf_imported():
        return
    _settled = True
    logger = logging.getLogger(_TF)
    if logger.level == logging.ERROR or _tensorflows_default(logger):
        logger.setLevel(logging.ERROR)
    else:
        _owns_logger = False   # the user set a level in between: theirs


def set_verbose() -> None:
    """Turn the switch on for this process (and its children) and undo what quiet_tensorflow
    set: the CLI's -v. TensorFlow's C++ level can only be restored before TensorFlow is
    imported."""
    global _set_cpp, _owns_logger
    os.environ[SWITCH] = "1"
    if _set_cpp and not _tf_imported() and os.environ.get(CPP_LEVEL) == "3":
        del os.environ[CPP_LEVEL]
    _set_cpp = False
    logger = logging.getLogger(_TF)
    if _owns_logger and logger.level == logging.ERROR:
        logger.setLevel(logging.NOTSET)
    _owns_logger = False
