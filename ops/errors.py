"""The operator's one error type.

Owns ``OperatorError``. Must not: import anything heavy (``attestmesh health`` raises it).
"""

from __future__ import annotations


class OperatorError(RuntimeError):
    """An operator action could not be done; the message says why (never with key material)."""
