"""Who may call, and what each caller sees: API keys and JWTs, tenant isolation on every RPC, the
active-jobs quota and the rate limit shared by replicas, all against a real server and Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.error
import uuid
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jobs.connections import redis_client
from jobs.keys import Keys
from longhaul.admin.v1 import admin_pb2 as apb
from longhaul.admin.v1 import admin_pb2_grpc as apb_grpc
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from server import apikeys
from server.ratelimit import RateLimited, RateLimiter
from tests import credentials
from tests.conftest import SMALL_IDS
from tests.credentials import OTHER_TOKEN, TOKEN
from tests.helpers import StoppedClock, fetch, initiate, wait_done

ISSUER, AUDIENCE = "https://issuer.test", "longhaul-tests"
HS_SECRET = "a-shared-secret-of-at-least-32-characters"


def rpc_error(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), error.details() or ""


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        reply = call
        if hasattr(reply, "__aiter__"):
            async for _ in reply:
                pass
        else:
            await reply
    return caught.value


def every_guarded_call(channel: grpc.aio.Channel, metadata: tuple = ()) -> list:
    """One call of each RPC of our three services (empty requests: the door comes before validation)."""
    stub, ops = pb_grpc.DownloadServiceStub(channel), operations_pb2_grpc.OperationsStub(channel)
    calls = []
    admin = apb_grpc.AdminServiceStub(channel)
    for module, service, service_stub in ((pb, "DownloadService", stub), (apb, "AdminService", admin)):
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            request = getattr(module, method.input_type.name)()
            calls.append((method.name, getattr(service_stub, method.name)(request, metadata=metadata)))
    for name, request in (
        ("GetOperation", operations_pb2.GetOperationRequest()),
        ("ListOperations", operations_pb2.ListOperationsRequest()),
        ("CancelOperation", operations_pb2.CancelOperationRequest()),
        ("DeleteOperation", operations_pb2.DeleteOperationRequest()),
        ("WaitOperation", operations_pb2.WaitOperationRequest()),
    ):
        calls.append((name, getattr(ops, name)(request, metadata=metadata)))
    return calls


# -- authentication ----------------------------------------------------------------------------------


async def test_every_rpc_but_health_and_reflection_needs_credentials(stack) -> None:
    async with grpc.aio.insecure_channel(stack.address) as channel:
        calls = every_guarded_call(channel)
        assert len(calls) == 7 + 8 + 5
        for name, call in calls:
            code, message = rpc_error(await refused(call))
            assert code == grpc.StatusCode.UNAUTHENTICATED, name
            assert "no credentials" in message and "authorization: Bearer" in message, message
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for reply in reflection for s in reply.list_services_response.service]
        assert "longhaul.download.v1.DownloadService" in services


@pytest.mark.parametrize(
    ("header", "phrase"),
    [
        ("Basic dXNlcjpwYXNz", "must read 'Bearer <API key or JWT>'"),
        ("Bearer", "must read 'Bearer <API key or JWT>'"),
        ("Bearer not-a-token", "neither a Longhaul API key (lh_...) nor a JWT"),
        ("Bearer lh_0badc0de_" + "A" * 43, "API key lh_0badc0de_... is not valid: unknown or revoked"),
        ("Bearer lh_short", "the API key (malformed) is not valid"),
        ("Bearer " + TOKEN[:-1] + ("B" if TOKEN[-1] != "B" else "C"), "is not valid: unknown or revoked"),
        ("Bearer a.b.c", "the JWT is malformed"),
    ],
)
async def test_bad_credentials_are_refused_with_a_reason_and_never_echoed(stack, header: str, phrase: str) -> None:
    error = await refused(stack.stub.ListDownloads(pb.ListDownloadsRequest(), metadata=(("authorization", header),)))
    code, message = rpc_error(error)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert phrase in message, message
    secret = header.partition(" ")[2]
    assert len(secret) < 12 or secret not in message, "the credential itself is never repeated"


async def test_api_keys_rotate_without_a_restart(make_stack, tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys"
    assert apikeys.main(["--file", str(keys), "create", "acme", "first key"]) == 0
    old = capsys.readouterr().out.strip()
    stack = await make_stack(api_keys_file=str(keys))
    listed = await stack.stub.ListDownloads(pb.ListDownloadsRequest(), metadata=credentials.bearer(old))
    assert list(listed.jobs) == []
    assert apikeys.main(["--file", str(keys), "create", "acme", "second key"]) == 0
    new = capsys.readouterr().out.strip()
    assert "sha256:" in keys.read_text() and new not in keys.read_text(), "only the hash is stored"
    job = await initiate(stack.stub, SMALL_IDS[:1], metadata=credentials.bearer(new))
    assert apikeys.main(["--file", str(keys), "revoke", apikeys.key_id_of(old) or ""]) == 0
    deadline = time.monotonic() + apikeys.RELOAD_EVERY_S + 5
    while True:
        try:
            await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id), metadata=credentials.bearer(old))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        await asyncio.sleep(0.2)
    status = await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id), metadata=credentials.bearer(new))
    assert status.job.job_id == job.job_id, "the same tenant's jobs stay visible under its new key"


# -- JWTs --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": []}
    for kid, key, alg in (("rsa-1", rsa_key, "RS256"), ("ec-1", ec_key, "ES256")):
        jwks["keys"].append(json.loads(_public_jwk(key)) | {"kid": kid, "alg": alg, "use": "sig"})
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(jwks))
    return {"rsa": rsa_key, "ec": ec_key, "jwks_file": str(path)}


def _public_jwk(key) -> str:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return algorithm.to_jwk(key.public_key())


def token_for(key, alg: str, kid: str = "", **overrides: object) -> str:
    claims = {"sub": "jwt-tenant", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300} | overrides
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


@pytest.fixture
async def jwt_stack(make_stack, signing_keys):
    return await make_stack(
        jwt_hs256_secret=HS_SECRET, jwt_jwks_file=signing_keys["jwks_file"], jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )


async def test_jwts_signed_each_supported_way_name_the_tenant(jwt_stack, signing_keys) -> None:
    tokens = [
        token_for(HS_SECRET, "HS256"),
        token_for(signing_keys["rsa"], "RS256", "rsa-1"),
        token_for(signing_keys["ec"], "ES256", "ec-1"),
    ]
    job = await initiate(jwt_stack.stub, SMALL_IDS[:1], metadata=credentials.bearer(tokens[0]))
    for token in tokens:
        listed = await jwt_stack.stub.ListDownloads(pb.ListDownloadsRequest(), metadata=credentials.bearer(token))
        assert [j.job_id for j in listed.jobs] == [job.job_id], "the same `sub`, the same tenant"
    other = token_for(signing_keys["ec"], "ES256", "ec-1", sub="someone|else")
    listed = await jwt_stack.stub.ListDownloads(pb.ListDownloadsRequest(), metadata=credentials.bearer(other))
    assert list(listed.jobs) == []


async def test_a_jwt_whose_subject_names_an_api_key_tenant_sees_none_of_its_jobs(jwt_stack) -> None:
    by_key = await initiate(jwt_stack.stub, SMALL_IDS[:1])  # the stack's API key, tenant TENANT
    same_name = credentials.bearer(token_for(HS_SECRET, "HS256", sub=credentials.TENANT))
    listed = await jwt_stack.stub.ListDownloads(pb.ListDownloadsRequest(), metadata=same_name)
    assert list(listed.jobs) == []
    error = await refused(jwt_stack.stub.GetStatus(pb.GetStatusRequest(job_id=by_key.job_id), metadata=same_name))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda k: token_for(HS_SECRET, "HS256", exp=int(time.time()) - 120), "the JWT has expired"),
        (lambda k: token_for(HS_SECRET, "HS256", aud="another-service"), f"audience is not '{AUDIENCE}'"),
        (lambda k: token_for(HS_SECRET, "HS256", iss="https://evil.test"), f"issuer is not '{ISSUER}'"),
        (lambda k: token_for(HS_SECRET, "HS256", exp=None), "has no 'exp' claim"),
        (lambda k: token_for(HS_SECRET, "HS256", exp=str(int(time.time()) + 300)), "'exp' claim must be a number"),
        (lambda k: token_for(HS_SECRET, "HS256", sub=None), "'sub' claim must name the tenant"),
        (lambda k: token_for("another-secret-that-is-32-characters!!", "HS256"), "signature does not verify"),
        (lambda k: token_for(rsa.generate_private_key(65537, 2048), "RS256", "rsa-1"), "signature does not verify"),
        (lambda k: token_for(k["rsa"], "RS256", "nobody"), "key id 'nobody' is not in the JWKS"),
        (lambda k: token_for(k["rsa"], "RS384", "rsa-1"), "signed with RS384 are not accepted"),
        (lambda k: jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": 2**31}, None, algorithm="none"),
         "signed with none are not accepted"),
        # Algorithm confusion: the RSA public key used as an HMAC secret.
        (lambda k: _hmac_with_public_key(k["rsa"]), "signature does not verify"),
    ],
    ids=["expired", "audience", "issuer", "no-exp", "exp-string", "no-sub", "hs-wrong-secret", "rs-wrong-key", "unknown-kid",
         "other-alg", "alg-none", "alg-confusion"],
)
async def test_bad_jwts_are_refused_with_the_reason(jwt_stack, signing_keys, make, phrase: str) -> None:
    token = make(signing_keys)
    error = await refused(jwt_stack.stub.ListDownloads(pb.ListDownloadsRequest(), metadata=credentials.bearer(token)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert phrase in (error.details() or ""), error.details()


def _hmac_with_public_key(key) -> str:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    encode = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=")  # noqa: E731
    header = encode(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    body = encode(json.dumps({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}).encode())
    signature = encode(hmac.new(pem, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()


# -- tenant isolation --------------------------------------------------------------------------------


async def test_another_tenants_job_reads_not_found_on_every_rpc(make_stack) -> None:
    stack = await make_stack(delay_min_ms=3_000, delay_max_ms=3_000)
    job = await initiate(stack.stub, SMALL_IDS[:2], request_id="shared-request-id")
    theirs = credentials.bearer(OTHER_TOKEN)
    nobody = str(uuid.uuid4())
    ops = operations_pb2_grpc.OperationsStub(stack.channel)

    def calls(job_id: str) -> list:
        name = f"operations/{job_id}"
        return [
            stack.stub.GetStatus(pb.GetStatusRequest(job_id=job_id), metadata=theirs),
            stack.stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id), metadata=theirs),
            stack.stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id, after_seq=1), metadata=theirs),
            stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=job_id), metadata=theirs),
            ops.GetOperation(operations_pb2.GetOperationRequest(name=name), metadata=theirs),
            ops.CancelOperation(operations_pb2.CancelOperationRequest(name=name), metadata=theirs),
            ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=name), metadata=theirs),
            ops.WaitOperation(operations_pb2.WaitOperationRequest(name=name), metadata=theirs),
        ]

    for foreign, unknown in zip(calls(job.job_id), calls(nobody), strict=True):
        mine, absent = await refused(foreign), await refused(unknown)
        assert mine.code() == absent.code() == grpc.StatusCode.NOT_FOUND
        assert mine.details().replace(job.job_id, nobody) == absent.details(), "no hint that the job exists"
    listed = await stack.stub.ListDownloads(pb.ListDownloadsRequest(), metadata=theirs)
    assert list(listed.jobs) == []
    operations = await ops.ListOperations(operations_pb2.ListOperationsRequest(name="operations"), metadata=theirs)
    assert list(operations.operations) == []
    same_key = await initiate(stack.stub, SMALL_IDS[:2], request_id="shared-request-id", metadata=theirs)
    assert same_key.job_id != job.job_id, "idempotency keys are per tenant"

    done = await wait_done(stack.stub, job.job_id)
    assert done.state == pb.JOB_STATE_COMPLETED, "nothing the other tenant did touched it"
    assert f"/tenants/{credentials.TENANT}/{job.job_id}/" in done.result.download_url


# -- quotas and rate limits --------------------------------------------------------------------------


def retry_delay_s(error: grpc.aio.AioRpcError) -> float:
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return info.retry_delay.ToMilliseconds() / 1000


async def test_a_tenant_at_its_active_jobs_limit_is_told_when_to_retry(make_stack) -> None:
    stack = await make_stack(tenant_max_active_jobs=2, delay_min_ms=5_000, delay_max_ms=5_000)
    first = await initiate(stack.stub, SMALL_IDS[:1])
    await initiate(stack.stub, SMALL_IDS[1:2])
    error = await refused(initiate(stack.stub, SMALL_IDS[2:3]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 downloads queued or running" in error.details()
    assert retry_delay_s(error) > 0
    assert dict(error.trailing_metadata())["retry-after"] == "5"
    assert await initiate(stack.stub, SMALL_IDS[2:3], metadata=credentials.bearer(OTHER_TOKEN)), "a quota per tenant"
    await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=first.job_id))
    assert await initiate(stack.stub, SMALL_IDS[2:3]), "an ended job frees its place"


async def test_the_rate_limit_holds_across_replicas_and_says_when_to_retry(make_stack) -> None:
    clock = StoppedClock()
    replicas = [await make_stack(workers=0, tenant_requests_per_s=5, clock=clock) for _ in range(2)]
    # A burst inside one one-second window, alternating between the two servers.
    outcomes = []
    for index in range(10):
        call = replicas[index % 2].stub.ListDownloads(pb.ListDownloadsRequest())
        try:
            await call
            outcomes.append(dict(await call.trailing_metadata()))  # gRPC clients read the trailers
        except grpc.aio.AioRpcError as error:
            outcomes.append(error)
    allowed = [o for o in outcomes if isinstance(o, dict)]
    refusals = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(allowed) == 5, outcomes
    assert [o["ratelimit-remaining"] for o in allowed] == ["4", "3", "2", "1", "0"]
    assert {(o["ratelimit-limit"], o["ratelimit-policy"]) for o in allowed} == {("5", "5;w=1")}
    for error in refusals:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the limit is 5 per second" in error.details()
        assert 0 < retry_delay_s(error) <= 1
        trailers = dict(error.trailing_metadata())
        assert trailers["retry-after"] == "1" and trailers["ratelimit-remaining"] == "0"
    clock.next_second()
    for replica in replicas:
        await replica.stub.ListDownloads(pb.ListDownloadsRequest())  # the next second has room again


async def test_the_bucket_serves_artifacts_only_with_a_signature(stack) -> None:
    done = await wait_done(stack.stub, (await initiate(stack.stub, SMALL_IDS[:1])).job_id)
    signed = done.result.download_url
    assert fetch(signed)
    unsigned = signed.split("?", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as refused_read:
        fetch(unsigned)
    assert refused_read.value.code == 403
    listing = unsigned.split("/tenants/", 1)[0] + "/"
    with pytest.raises(urllib.error.HTTPError) as refused_list:
        fetch(listing)
    assert refused_list.value.code == 403


async def test_a_tenant_can_have_limits_of_its_own(make_stack) -> None:
    clock = StoppedClock()
    stack = await make_stack(
        workers=0,
        clock=clock,
        tenant_max_active_jobs=0,
        tenant_requests_per_s=0,
        tenant_limits=f"{credentials.OTHER_TENANT}=1/3",
    )
    theirs = credentials.bearer(OTHER_TOKEN)
    await initiate(stack.stub, SMALL_IDS[:1], metadata=theirs)
    error = await refused(initiate(stack.stub, SMALL_IDS[1:2], metadata=theirs))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "1 downloads" in error.details()
    for index in range(5):
        await initiate(stack.stub, SMALL_IDS[index : index + 1])  # the default: no limits
    clock.next_second()  # a window of its own for the rate limit
    outcomes = []
    for _ in range(4):
        try:
            await stack.stub.ListDownloads(pb.ListDownloadsRequest(), metadata=theirs)
            outcomes.append("ok")
        except grpc.aio.AioRpcError as error:
            outcomes.append(error.code().name)
    assert outcomes == ["ok", "ok", "ok", "RESOURCE_EXHAUSTED"]


async def test_high_limits_are_leased_in_blocks_and_still_hold_across_replicas(settings) -> None:
    limit = 200  # leases of 10
    async with redis_client(settings) as redis:
        own = settings.replace(tenant_requests_per_s=limit)
        clock = StoppedClock()
        replicas = [RateLimiter(redis, Keys(settings.redis_prefix), own, clock) for _ in range(3)]
        allowed, refused_calls = 0, 0
        before = await script_calls(redis)
        for index in range(300):
            try:
                await replicas[index % 3].hit(credentials.TENANT)
                allowed += 1
            except RateLimited:
                refused_calls += 1
        commands = await script_calls(redis) - before
    assert limit - 3 * 9 <= allowed <= limit, "never over the limit; at most a lease short per replica"
    assert refused_calls == 300 - allowed
    assert commands <= limit / 10 + 3, f"{commands} Redis round trips for 300 calls: one per lease, not per call"


async def script_calls(redis) -> int:
    stats = await redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
