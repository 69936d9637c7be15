"""The vendor's official SDK (``huaweicloudsdkroma``) against the emulator over loopback.

The SDK signs every request with AK/SK and sends no token, so these calls being served
shows that the emulator verifies signatures exactly as the SDK makes them. The SDK is
synchronous (requests); it runs in a thread while the emulator serves in the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkroma.v2 import (
    AddingBackendInstancesV2Request,
    BatchDisableMembersRequest,
    BatchEnableMembersRequest,
    DeleteBackendInstanceV2Request,
    ListBackendInstancesV2Request,
    MemberInfo,
    MembersBatchEnableOrDisable,
    UpdateBackendInstancesV2Request,
    VpcMemberCreate,
    VpcMemberModify,
)
from huaweicloudsdkroma.v2.roma_client import RomaClient

from tests.test_emulator import HEX32
from worker.emulator import ChannelSpec, Emulator, EmulatorConfig

AK, SK = "AKSDK00000000000", "sdk-secret-key-0000000000000000000000000"
PROJECT, INSTANCE, CHANNEL = "0123456789abcdef0123456789abcdef", "inst-1", "ch-1"


def client(url: str, sk: str = SK, security_token: str | None = None) -> RomaClient:
    credentials = BasicCredentials(AK, sk, PROJECT)
    if security_token is not None:
        credentials = credentials.with_security_token(security_token)
    return RomaClient.new_builder().with_credentials(credentials).with_endpoints([url]).build()


@asynccontextmanager
async def serving() -> AsyncIterator[Emulator]:
    config = EmulatorConfig(
        channels=(ChannelSpec(PROJECT, INSTANCE, CHANNEL, port=8080),), aksk=((AK, SK),)
    )
    async with Emulator(config) as emulator:
        yield emulator


def add_list_delete(
    sdk: RomaClient,
) -> tuple[list[str], list[str], list[str], int, list[str]]:
    members = [
        MemberInfo(host="10.0.0.1", weight=5, member_group_name="blue"),
        MemberInfo(host="10.0.0.2", port=9090),
        MemberInfo(ecs_id="vm-1", ecs_name="web01"),
    ]
    added = sdk.adding_backend_instances_v2(
        AddingBackendInstancesV2Request(
            instance_id=INSTANCE, vpc_channel_id=CHANNEL, body=VpcMemberCreate(members=members)
        )
    )
    listed = sdk.list_backend_instances_v2(
        ListBackendInstancesV2Request(
            instance_id=INSTANCE, vpc_channel_id=CHANNEL, name="10.0.0", offset=0, limit=50
        )
    )
    nothing = sdk.list_backend_instances_v2(
        ListBackendInstancesV2Request(
            instance_id=INSTANCE, vpc_channel_id=CHANNEL, name="a b:c 名", limit=500
        )
    )
    deleted = sdk.delete_backend_instance_v2(
        DeleteBackendInstanceV2Request(
            instance_id=INSTANCE, vpc_channel_id=CHANNEL, member_id=added.members[0].id
        )
    )
    return (
        [f"{m.ecs_id or m.host}:{m.port}" for m in added.members],
        [m.host for m in added.members],
        [m.host for m in listed.members],
        deleted.status_code,
        [m.host for m in nothing.members],
    )


async def test_the_official_sdk_adds_lists_and_deletes_members_signing_with_aksk() -> None:
    async with serving() as emulator:
        added, added_hosts, listed, deleted, nothing = await asyncio.to_thread(
            add_list_delete, client(emulator.url)
        )
        stats = emulator.stats
        remaining = [
            m["ecs_id"] or m["host"] for m in emulator.state.channels[(PROJECT, INSTANCE, CHANNEL)]
        ]
    assert added == ["10.0.0.1:8080", "10.0.0.2:9090", "vm-1:8080"]
    assert added_hosts[2].startswith("192.168.")  # the service fills an ECS member's in
    assert listed == ["10.0.0.1", "10.0.0.2"]
    assert (deleted, nothing) == (204, [])
    assert remaining == ["10.0.0.2", "vm-1"]
    assert dict(stats.by_status) == {201: 1, 200: 2, 204: 1}


def group_then_disable(sdk: RomaClient) -> tuple[list[str], int, int]:
    """The SDK's group-scoped PUT and its batch-disable, then batch-enable."""
    sdk.adding_backend_instances_v2(
        AddingBackendInstancesV2Request(
            instance_id=INSTANCE,
            vpc_channel_id=CHANNEL,
            body=VpcMemberCreate(
                members=[
                    MemberInfo(host="10.0.0.1", member_group_name="blue"),
                    MemberInfo(host="10.0.0.2", member_group_name="green"),
                ]
            ),
        )
    )
    replaced = sdk.update_backend_instances_v2(
        UpdateBackendInstancesV2Request(
            instance_id=INSTANCE,
            vpc_channel_id=CHANNEL,
            body=VpcMemberModify(
                member_group_name="blue",
                members=[MemberInfo(host="10.0.0.3", member_group_name="blue")],
            ),
        )
    )
    ids = MembersBatchEnableOrDisable(member_ids=[replaced.members[0].id])
    disabled = sdk.batch_disable_members(
        BatchDisableMembersRequest(instance_id=INSTANCE, vpc_channel_id=CHANNEL, body=ids)
    )
    enabled = sdk.batch_enable_members(
        BatchEnableMembersRequest(instance_id=INSTANCE, vpc_channel_id=CHANNEL, body=ids)
    )
    return [m.host for m in replaced.members], disabled.status_code, enabled.status_code


async def test_the_sdk_replaces_a_group_and_disables_and_enables_members() -> None:
    async with serving() as emulator:
        replaced, disabled, enabled = await asyncio.to_thread(
            group_then_disable, client(emulator.url)
        )
        channel = emulator.state.channels[(PROJECT, INSTANCE, CHANNEL)]
        members = {m["host"]: (m["member_group_name"], m["status"]) for m in channel}
    assert replaced == ["10.0.0.3"] and (disabled, enabled) == (204, 204)
    assert members == {"10.0.0.2": ("green", 1), "10.0.0.3": ("blue", 1)}
    assert emulator.stats.members_updated == 2


async def test_temporary_credentials_sign_their_security_token() -> None:
    async with serving() as emulator:
        sdk = client(emulator.url, security_token="temporary-token")
        added, *_ = await asyncio.to_thread(add_list_delete, sdk)
    assert len(added) == 3


async def test_the_sdk_sees_401_apig_0301_and_the_request_id_for_a_wrong_sk() -> None:
    async with serving() as emulator:
        with pytest.raises(ClientRequestException) as caught:
            await asyncio.to_thread(add_list_delete, client(emulator.url, sk="wrong"))
        assert emulator.stats.by_status == {401: 1}
    refusal = caught.value
    assert (refusal.status_code, refusal.error_code) == (401, "APIG.0301")
    assert refusal.error_msg.startswith(
        "Incorrect IAM authentication information: verify aksk signature fail, canonicalRequest:"
    )
    assert HEX32.fullmatch(refusal.request_id)
