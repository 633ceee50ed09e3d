"""The one exception type for problems the user can fix (bad input, bad config)."""


class NanosegError(Exception):
    """A user-facing error: its message is one line naming the file or key and the fix.

    The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
    """
