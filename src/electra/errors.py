"""The one exception type that means "the user's input is wrong": printed as one line, no traceback."""


class UserError(Exception):
    """Bad input or impossible settings; the message says what is wrong and what to do."""
