"""User-facing errors: each names the problem and the fix; the CLI prints them as one line, no traceback."""


class CachepilotError(Exception):
    """Base class for errors caused by the user's input or files, not by a bug in cachepilot."""


class UnknownModelError(CachepilotError):
    pass


class WeightsNotFoundError(CachepilotError):
    pass


class CorruptWeightsError(CachepilotError):
    pass


class InvalidInputError(CachepilotError, ValueError):
    """A value out of its allowed range or of the wrong kind (`cachepilot.checks`)."""


class NonFiniteLatentsError(CachepilotError):
    pass


class IntegrityError(CachepilotError):
    """A file is missing, altered or not what it claims to be."""
