"""The exceptions the command line turns into a single line on stderr.

``UserError``: bad input (exit status 2), raised before any work starts. ``RunStopped``: a
run that could not go on (a non-finite loss, a full disk, a signal); its message says what
was kept on disk, and ``exit_status`` is the command's exit status.
"""


class UserError(Exception):
    """Bad input from the user: missing or corrupt data, bad arguments, a wrong checkpoint."""


class RunStopped(Exception):
    """Training stopped before its end; the message names what is kept (exit status 1, or 128 + signal)."""

    exit_status = 1


class StopNow(KeyboardInterrupt):
    """A second SIGINT / SIGTERM: stop at once, without saving. A ``BaseException`` (like Ctrl-C's
    KeyboardInterrupt), so that no ``except Exception`` on the way up can swallow it."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.exit_status = 128 + signal_number


class Interrupted(RunStopped):
    """SIGINT or SIGTERM: the trainer saved a checkpoint between two steps and stopped."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_status = 128 + signal_number
