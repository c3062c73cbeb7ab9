"""The error type for mistakes a user can make on the command line."""


class UsageError(ValueError):
    """A bad argument, path or file: the CLI prints its one-line message and exits with code 2."""
