"""The one error type users see: a problem and the fix, never a bare stack trace."""

from __future__ import annotations


class SmartbinError(Exception):
    """A problem the user can act on.

    ``problem`` names what is wrong (with the file, key or value involved);
    ``fix`` says what to do about it.
    """

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}\n  fix: {self.fix}" if self.fix else self.problem
