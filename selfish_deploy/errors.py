"""One exception type for bad user input, so CLIs can exit 2 with a message instead of a traceback."""


class UserError(Exception):
    """Input the user can fix: a missing directory, a corrupt file, a bad flag value."""
