"""The one error type of the converter: the CLI prints its message and exits non-zero."""


class ConvertError(RuntimeError):
    """A conversion cannot proceed; the message names the folder, key or shape at fault."""
