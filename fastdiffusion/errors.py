"""The one exception type for bad user input: the CLI prints it as a single line and exits with code 2."""


class UserError(Exception):
    """Bad input (a file, a flag, a config) that the user can fix; the message names the input and the fix."""
