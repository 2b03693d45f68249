"""User-facing errors: one line that names the file, line or example and says what to do."""


class AutoskillError(Exception):
    """An error caused by the user's input or artifacts; the CLI prints it as one line, without a traceback."""


class NotFittedError(AutoskillError, AttributeError):
    """A fitted attribute read before any rows were seen (an AttributeError too, so `hasattr` answers False)."""


class BadExampleError(AutoskillError):
    """One corpus example cannot be used; `--on-bad-example skip` may skip it."""

    def __init__(self, example_id: str, reason: str, *, source: str = ""):
        self.example_id = example_id
        self.reason = reason
        where = f"{source}: " if source else ""
        super().__init__(f"{where}example {example_id!r}: {reason}")


class StoppedByBadExample(AutoskillError):
    """A bad example under `--on-bad-example error`: raised before its batch changed any statistics, so what was
    computed before it can be kept (a checkpoint) for a rerun with skip."""
