"""The one exception type that the command line turns into a single line and exit status 2."""


class UserError(Exception):
    """Bad input from the user: missing or corrupt data, bad arguments, a wrong checkpoint."""
