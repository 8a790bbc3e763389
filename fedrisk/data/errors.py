"""The one exception the data layer raises for user mistakes."""

from fedrisk.errors import UserError


class DataError(UserError):
    """A problem with a user's table, contract or arguments.

    ``str(error)`` is a single actionable line that names the file and column
    where there is one, e.g. ``"bank.csv: column 'annual_inc' is missing
    (required by contract)"``. Callers print it as is; no traceback needed.
    """


def first_problem(problems: list[str]) -> str:
    """The first of ``problems`` (one line each), and how many more there are."""
    more = len(problems) - 1
    return problems[0] + (f" (and {more} more problems)" if more else "")


def first_line(error: BaseException) -> str:
    """Return the first non-empty line of an exception's message (its type name if empty)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


class TableRefused(DataError):
    """A table its owner may not use: unreadable, or failing its contract.

    ``str(error)`` is the full one-line report for the table's owner (it may quote
    values from the rows); ``public`` says the same without anything read from the
    rows (:attr:`fedrisk.data.CheckReport.public_errors`): what a bank may tell
    others about why it refuses.
    """

    def __init__(self, message: str, public: str) -> None:
        """A refusal with its full ``message`` and its value-free ``public`` text."""
        super().__init__(message)
        self.public = public
