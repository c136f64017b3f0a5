"""The one exception type for mistakes in what the user gave (files, flags, folders).

Entry points print a `UserError` as one line on stderr and exit with status 2; any
other exception is a bug and keeps its traceback. `KERAS_CNN_TRACEBACK=1` shows the
traceback of user errors too.
"""


class UserError(ValueError):
  """Bad input from the user; the message names the file or flag and the problem."""


class SnapshotError(UserError):
  """A snapshot that cannot be used; the message names file, field and problem."""
