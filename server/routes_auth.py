"""``/api/auth/*``: signup, login, their batch forms, and delete-all-users (contract §1.3, 1-5)."""

from __future__ import annotations

import time

import trio
from quart import Blueprint, Response

from protocol import rest
from protocol.ratelimit import retry_after
from protocol.rest import RequestError
from server.http_io import admin_gate, client_ip, json_response, read_body
from server.services import Services
from storage.ids import new_id
from storage.records import UserRecord
from storage.timefmt import iso_utc

ALREADY_EXISTS = "Username already exists"
TOO_MANY_LOGINS = "Too many login attempts, try again later"


def _too_many(wait: float) -> RequestError:
    return RequestError(429, TOO_MANY_LOGINS, retry_after=retry_after(wait))


def _user(username: str, password_hash: str) -> UserRecord:
    now = time.time()
    stamp = iso_utc(now)
    return UserRecord(new_id(int(now * 1000)), username, password_hash, stamp, stamp)


async def _login_batch(
    svc: Services, pairs: list[tuple[str, str]]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """login-batch's results and errors, in input order, with the login limits applied before bcrypt."""
    ip, guard, now = client_ip(), svc.login_guard, trio.current_time()
    wait = guard.ip_wait(ip, now)
    if wait > 0:
        raise _too_many(wait)
    # Names over their own limit are answered in errors without a lookup or a hash; the rest go on,
    # so the load test's 200 stays a 200 whatever one of its users did before.
    limited = {name for name, _ in pairs if guard.user_wait(name, now) > 0}
    users = await svc.storage.get_users([name for name, _ in pairs if name not in limited])
    known = [(name, password) for name, password in pairs if name in users and name not in limited]
    verdicts = iter(await svc.hasher.check_batch([(p, users[n].password_hash) for n, p in known]))
    results: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    for name, _ in pairs:  # input order, as the original's sequential loop
        if name in limited:
            errors.append({"username": name, "error": TOO_MANY_LOGINS})
        elif name not in users:
            errors.append({"username": name, "error": "User not found"})
        elif next(verdicts):
            results.append({"username": name, "token": svc.tokens.issue(name)})
        else:
            errors.append({"username": name, "error": "Invalid password"})
    failed = [e["username"] for e in errors if e["error"] != TOO_MANY_LOGINS]
    if failed:
        guard.failed(ip, failed, trio.current_time())  # once for the IP, once per failed name
    return results, errors


def auth_routes(svc: Services) -> Blueprint:
    bp = Blueprint("auth", __name__, url_prefix="/api/auth")

    @bp.post("/signup")
    async def signup() -> Response:
        username, password = rest.credentials(await read_body(), svc.limits)
        if await svc.storage.get_users([username]):  # cheap refusal before an expensive hash
            raise RequestError(409, ALREADY_EXISTS)
        record = _user(username, await svc.hasher.hash(password))
        [inserted] = await svc.storage.insert_users([record])
        if not inserted:  # a concurrent signup took the name while we hashed
            raise RequestError(409, ALREADY_EXISTS)
        return json_response({"message": "User created successfully", "username": username}, 201)

    @bp.post("/signup-batch")
    async def signup_batch() -> Response:
        pairs = rest.credential_list(await read_body(), svc.limits)
        existing = await svc.storage.get_users([name for name, _ in pairs])
        errors: list[dict[str, str]] = []
        fresh: dict[str, str] = {}
        for name, password in pairs:
            if name in existing or name in fresh:  # repeats within one request count as existing too
                errors.append({"username": name, "error": ALREADY_EXISTS})
            else:
                fresh[name] = password
        hashes = await svc.hasher.hash_batch(list(fresh.values()))
        records = [_user(name, hashed) for name, hashed in zip(fresh, hashes, strict=True)]
        created: list[dict[str, str]] = []
        for record, inserted in zip(records, await svc.storage.insert_users(records), strict=True):
            if inserted:
                created.append({"username": record.username, "id": record.id})
            else:
                errors.append({"username": record.username, "error": ALREADY_EXISTS})
        message = f"Batch signup completed: {len(created)} users created, {len(errors)} errors"
        return json_response({"message": message, "created": created, "errors": errors}, 201)

    @bp.post("/login")
    async def login() -> Response:
        username, password = rest.credentials(await read_body(), svc.limits)
        ip, guard = client_ip(), svc.login_guard
        # Before the lookup and bcrypt: a refused guess must cost us nothing (bcrypt is the cost).
        wait = max(guard.ip_wait(ip, trio.current_time()), guard.user_wait(username, trio.current_time()))
        if wait > 0:
            raise _too_many(wait)
        user = (await svc.storage.get_users([username])).get(username)
        if user is None or not await svc.hasher.check(password, user.password_hash):
            guard.failed(ip, [username], trio.current_time())
            if svc.metrics is not None:
                svc.metrics.auth_failures.labels("login").inc()
            raise RequestError(401, "Invalid credentials")
        return json_response({"token": svc.tokens.issue(user.username), "username": user.username})

    @bp.post("/login-batch")
    async def login_batch() -> Response:
        pairs = rest.credential_list(await read_body(), svc.limits)
        results, errors = await _login_batch(svc, pairs)
        message = f"Batch login completed: {len(results)} successful, {len(errors)} errors"
        return json_response({"message": message, "results": results, "errors": errors})

    @bp.delete("/delete-all-users")
    async def delete_all_users() -> Response:
        admin_gate(svc.admin_routes, svc.admin_token)
        rest.confirmation(await read_body(), "DELETE_ALL_USERS_CONFIRM")
        deleted = await svc.storage.delete_all_users()
        return json_response(
            {
                "message": f"All users deleted successfully! Deleted: {deleted} users",
                "deletedCount": deleted,
                "timestamp": iso_utc(time.time()),
            }
        )

    return bp
