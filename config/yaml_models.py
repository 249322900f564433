"""Reading a YAML settings file into a pydantic model, with one-line errors that name the file and key.

:func:`load_yaml_model` is the read-parse-validate step that every YAML file a support team edits goes
through (``config/order_policy.yaml`` today; ``replies.py``, ``sla.py`` and ``bot/playbook.py`` repeat
it and can move here). A problem is one line: ``PATH: not valid YAML (line 3: ...)``,
``PATH: expected a mapping with ...``, or ``PATH: KEY.SUBKEY: why (and N more)``.

Must not: read the environment, fill defaults of its own, or know any particular file's keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from config.files import read_utf8

Model = TypeVar("Model", bound=BaseModel)


def load_yaml_model(path: Path, model: type[Model], error: type[Exception], expected: str) -> Model:
    """Read ``path`` (UTF-8 YAML holding a mapping) and validate it as ``model``.

    Args:
        path: the file.
        model: the pydantic model of its contents.
        error: the exception type raised for a bad file (a ``ValueError`` subclass).
        expected: what the top-level mapping holds, for the message (``"'answers' and 'orders'"``).
    Raises:
        error: not UTF-8, not YAML, not a mapping, or a value the model refuses; one line naming the
            file and, for a value, the key path of the first problem.
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        data: Any = yaml.safe_load(read_utf8(path, error))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise error(f"{path}: not valid YAML ({where}{problem})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping with {expected}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise error(f"{path}: {key + ': ' if key else ''}{message}{more}") from None
