"""The one error every dataset reader raises, below both the readers and the palettes."""


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent: the message names it and the fix."""
