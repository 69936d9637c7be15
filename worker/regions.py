"""Endpoints by region, as the vendor publishes them and its SDK derives them. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from worker.config import check_endpoint

# Regions whose endpoints are not under .myhuaweicloud.com (the SDK's ApigRegion).
_DOMAINS: Final = {"eu-west-101": "myhuaweicloud.eu"}
_DEFAULT_DOMAIN: Final = "myhuaweicloud.com"


def _regional(service: str, region: str, env: Mapping[str, str]) -> str:
    """``https://{service}.{region}.{domain}``, after the SDK's own override,
    HUAWEICLOUD_SDK_REGION_{SERVICE}_{REGION_UPPER_UNDERSCORED}."""
    name = f"HUAWEICLOUD_SDK_REGION_{service.upper()}_{region.upper().replace('-', '_')}"
    found = _override(name, env)
    return found or f"https://{service}.{region}.{_DOMAINS.get(region, _DEFAULT_DOMAIN)}"


def _override(name: str, env: Mapping[str, str]) -> str | None:
    """The endpoint an SDK variable sets, held to the rule of ``--endpoint`` (ValueError
    naming the variable otherwise); None when it is unset or blank."""
    found = env.get(name, "").strip()
    if not found:
        return None
    try:
        return check_endpoint(found)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def endpoint(api: str, region: str, env: Mapping[str, str]) -> str:
    """The API endpoint of ``region`` for ``api`` (``roma`` or ``apig``)."""
    return _regional(api, region, env)


def iam_endpoint(region: str | None, env: Mapping[str, str]) -> str:
    """IAM's endpoint for ``region`` (the global one without a region), after the SDK's
    ``HUAWEICLOUD_SDK_IAM_ENDPOINT``."""
    explicit = _override("HUAWEICLOUD_SDK_IAM_ENDPOINT", env)
    if explicit:
        return explicit
    if region is None:
        return f"https://iam.{_DEFAULT_DOMAIN}"
    return _regional("iam", region, env)
