"""Optional dependencies: one that is missing is one sentence naming the extra that installs it.

Example:
    >>> require("peft", "train", "vlmdata train")  # doctest: +SKIP
    Traceback (most recent call last):
    vlmdata.errors.FatalError: vlmdata train needs peft, which is not installed: pip install 'vlmdata[train]'.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vlmdata.errors import FatalError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Imports `module`, which `what` needs and the `extra` of vlmdata installs.

    Args:
        module: the module's import name, e.g. "bitsandbytes".
        extra: the extra of vlmdata that installs it, e.g. "quantization".
        what: what needs it, as the subject of a sentence, e.g. "--load-in-4bit".

    Raises:
        FatalError: the module is not installed, or is installed but cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name != module and not module.startswith(error.name + "."):
            raise _broken(module, extra, what, error) from None  # the module is there, one it imports is not
        raise FatalError(f"{what} needs {module}, which is not installed: pip install 'vlmdata[{extra}]'.") from None
    except ImportError as error:
        raise _broken(module, extra, what, error) from None


def _broken(module: str, extra: str, what: str, error: ImportError) -> FatalError:
    reason = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
    return FatalError(f"{what} needs {module}, which cannot be imported ({reason}): pip install 'vlmdata[{extra}]'.")
