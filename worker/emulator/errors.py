"""The API's error answers, with the codes and messages the service writes.

Every refusal the emulator gives is an :class:`ApiError`, so a client sees exactly the
``{"error_code", "error_msg"}`` bodies documented for the real service.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.members import Problem

_DOCS = "Please refer to the support documentation"


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """A refusal: the HTTP status, the ``APIG.xxxx`` code and the message of the answer."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> dict[str, str]:
        return {"error_code": self.code, "error_msg": self.message}


def serialization(detail: str) -> ApiError:
    return ApiError(400, "APIG.2000", f"Parameter error: Serialization error: {detail}")


def missing(parameter: str) -> ApiError:
    return ApiError(
        400,
        "APIG.2001",
        f"The request parameters must be specified,parameterName:{parameter}. {_DOCS}",
    )


def too_large(parameter: str) -> ApiError:
    return ApiError(
        400, "APIG.2003", f"The parameter value is too large,parameterName:{parameter}. {_DOCS}"
    )


def out_of_range(parameter: str) -> ApiError:
    return ApiError(
        400,
        "APIG.2004",
        f"The parameter value is outside the allowable range,parameterName:{parameter}. {_DOCS}",
    )


def invalid(parameter: str) -> ApiError:
    return ApiError(400, "APIG.2012", f"Invalid parameter value,parameterName:{parameter}. {_DOCS}")


def for_problem(parameter: str, problem: Problem) -> ApiError:
    """The answer for a field refused by the shared member rules."""
    if problem is Problem.MISSING:
        return missing(parameter)
    if problem is Problem.RANGE:
        return out_of_range(parameter)
    return invalid(parameter)


# Functions, not shared constants: a raised exception keeps its traceback, and a shared
# instance would keep the last request that raised it alive.
def bad_token() -> ApiError:
    return ApiError(401, "APIG.1002", "Incorrect token or token resolution failed")


def read_only() -> ApiError:
    return ApiError(403, "APIG.1005", "No permissions to request this method")


def system_error() -> ApiError:
    return ApiError(500, "APIG.9999", "System error")


def entity_too_large() -> ApiError:
    """The gateway's own answer for a body over the limit (the members page omits it)."""
    return ApiError(413, "APIG.0201", "Request entity too large")


def unknown_instance(instance_id: str) -> ApiError:
    return ApiError(404, "APIG.3030", f"The instance does not exist;id:{instance_id}")


def unknown_channel(vpc_channel_id: str) -> ApiError:
    return ApiError(404, "APIG.3023", f"The VPC channel does not exist,id:{vpc_channel_id}")


def unknown_member(member_id: str) -> ApiError:
    return ApiError(404, "APIG.3020", f"The VPC channel member does not exist,id:{member_id}")


def throttled(rate: float, retry_after: int) -> ApiError:
    """The 429 answer; ``retry_after`` (whole seconds) goes into the Retry-After header."""
    return ApiError(
        429,
        "APIG.0308",
        "The throttling threshold has been reached: policy user over ratelimit,"
        f"limit:{rate:g},time:1 second",
        (("Retry-After", str(retry_after)),),
    )
