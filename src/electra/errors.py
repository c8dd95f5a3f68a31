"""The exceptions that end a command with one line and a chosen exit code, never a traceback."""

import signal


class UserError(Exception):
    """Bad input or impossible settings; the message says what is wrong and what to do."""


class Interrupted(Exception):
    """Work stopped by a signal after saving what it had; the command exits 128 + the signal's number
    (130 for SIGINT, 143 for SIGTERM), as shells expect."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGTERM))
