"""The API's error answers, with the codes and messages the service writes.

Every refusal the emulator gives is an :class:`ApiError`, so a client sees exactly the
``{"error_code", "error_msg", "request_id"}`` bodies documented for the real service.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.members import Problem
from worker.signing import Refusal, Refused

_DOCS = "Please refer to the support documentation"


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """A refusal: the HTTP status, the ``APIG.xxxx`` code and the message of the answer."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self, request_id: str) -> dict[str, str]:
        """The JSON body, carrying the ``X-Request-Id`` of the answer as the service does."""
        return {"error_code": self.code, "error_msg": self.message, "request_id": request_id}


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


def signature_refused(refused: Refused) -> ApiError:
    """The gateway's answer to a signed request it cannot accept: a bad or unsigned
    signature, an unknown AK (``ak X not exist``) or a stale ``X-Sdk-Date``."""
    detail = refused.detail
    if refused.reason not in (Refusal.UNKNOWN_KEY, Refusal.EXPIRED):
        detail = f"verify aksk signature fail, {detail}"
    return ApiError(401, "APIG.0301", f"Incorrect IAM authentication information: {detail}")


def key_locked(access_key: str) -> ApiError:
    """An AK/SK pair locked after too many failures (the wording is the emulator's own:
    the service's is not published)."""
    return ApiError(
        401,
        "APIG.0301",
        f"Incorrect IAM authentication information: ak {access_key} is locked for 5 minutes "
        "after more than 5 failures in a row",
    )


def read_only() -> ApiError:
    return ApiError(403, "APIG.1005", "No permissions to request this method")


def system_error() -> ApiError:
    return ApiError(500, "APIG.9999", "System error")


def write_conflict() -> ApiError:
    """Another write to the same channel is in progress: the service's database refuses
    the later one, changing nothing."""
    return ApiError(500, "APIG.9999", "database data synchronize failed")


def overloaded() -> ApiError:
    """The emulator holds as many request bodies as it allows: try again shortly."""
    return ApiError(503, "APIG.0202", "Backend unavailable", (("Retry-After", "1"),))


def entity_too_large() -> ApiError:
    """The gateway's own answer for a body over the limit (the members page omits it)."""
    return ApiError(413, "APIG.0201", "Request entity too large")


def unknown_instance(instance_id: str) -> ApiError:
    return ApiError(404, "APIG.3030", f"The instance does not exist;id:{instance_id}")


def unknown_channel(vpc_channel_id: str) -> ApiError:
    return ApiError(404, "APIG.3023", f"The VPC channel does not exist,id:{vpc_channel_id}")


def unknown_member(member_id: str) -> ApiError:
    return ApiError(404, "APIG.3024", f"The VPC instance does not exist,id:{member_id}")


def channel_full() -> ApiError:
    """The change would take the channel past its member quota."""
    return ApiError(
        403,
        "APIG.3110",
        "The number of cloud servers in the VPC channel exceeds the maximum allowed limit",
    )


def throttled(rate: float, retry_after: int) -> ApiError:
    """The 429 answer; ``retry_after`` (whole seconds) goes into the Retry-After header.

    The limit is written as the service writes it: a whole number without a fraction.
    """
    limit = str(int(rate)) if rate.is_integer() else str(rate)
    return ApiError(
        429,
        "APIG.0308",
        "The throttling threshold has been reached: policy user over ratelimit,"
        f"limit:{limit},time:1 second",
        (("Retry-After", str(retry_after)),),
    )
