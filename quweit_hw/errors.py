"""The one exception for a user's bad input; everything else that goes wrong is a defect."""


class UserError(Exception):
    """Bad input from the user (a file, an option, a board that does not fit): the CLI prints
    it as one line and exits with code 2. Library defects raise ordinary exceptions
    (ValueError, TypeError, RuntimeError) and stay tracebacks."""
