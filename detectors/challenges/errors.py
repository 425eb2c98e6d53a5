"""The one exception type of the challenge package."""


class ChallengeError(ValueError):
    """A challenge spec, parameter or context is invalid; the message says what to change."""
