"""The one domain error type of didact.

Every error a user can cause (bad config, bad input data, an unreachable server)
is a :class:`DidactError` whose message names the input, the problem and the fix.
"""

from __future__ import annotations


class DidactError(Exception):
    """A problem the user can act on.

    ``what`` names the input (a setting, a file, a partition), ``problem`` says
    what is wrong with it, ``fix`` says what to do.  ``str(err)`` joins the three.
    """

    def __init__(self, what: str, problem: str, fix: str | None = None):
        self.what = what
        self.problem = problem
        self.fix = fix
        msg = f"{what}: {problem}"
        if fix:
            msg += f" — {fix}"
        super().__init__(msg)

    def __reduce__(self):
        # rebuilt from its three parts, so it crosses process boundaries (spawn workers)
        return (type(self), (self.what, self.problem, self.fix))


class DataQualityError(DidactError):
    """Input data too damaged to use (corrupt counters, empty partition, ...)."""


class SourceUnavailableError(DidactError):
    """A telemetry source (Prometheus, a BMC) could not be reached or answered badly."""


class RegistryError(DidactError):
    """The model registry is unreachable or holds something unusable."""
