"""Which method reads which setting: the one table the config check and ``--help`` share.

A setting listed here means something to the methods named beside it only. Given as a flag to
any other method it would be stored and ignored, so the config check refuses it, naming the flag
-- unless the method fixes that setting to the very value given (``Method.required_model``:
``--method dml --no-gate`` states what dml trains anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# Config field -> the methods that read it.
READERS: Mapping[str, frozenset[str]] = MappingProxyType({
    "temperature": frozenset({"one", "kd", "dml", "cl_ilr", "okddip"}),
    # The distillation weight and its ramp-up: methods whose loss has a weighted KL term.
    "kl_weight": frozenset({"one", "kd", "dml", "okddip"}),
    "rampup": frozenset({"one", "kd", "dml", "okddip"}),
    "detach_teacher": frozenset({"one"}),
    "teacher": frozenset({"kd"}),
    "teacher_output": frozenset({"kd"}),
    # The sharing of a ONE network; other multi-branch methods fix their own.
    "shared_stages": frozenset({"one"}),
    "share_stem": frozenset({"one"}),
    "gate": frozenset({"one"}),
})


def readers(field: str) -> frozenset[str] | None:
    """The methods that read config field ``field``, or None when every method does."""
    return READERS.get(field)


def unread_flags(method: str, given: Mapping[str, object],
                 fixed: Mapping[str, object]) -> list[str]:
    """The fields in ``given`` that ``method`` does not read and does not fix to that value.

    Args:
        method: the ``--method`` value.
        given: the flags given (config field -> value).
        fixed: the method's ``required_model``.
    """
    return [field for field, value in given.items()
            if field in READERS and method not in READERS[field]
            and not (field in fixed and fixed[field] == value)]


__all__ = ["READERS", "readers", "unread_flags"]
