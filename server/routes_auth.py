"""``/api/auth/*``: signup, login, their batch forms, and delete-all-users (contract §1.3, 1-5)."""

from __future__ import annotations

import time

from quart import Blueprint, Response

from protocol import rest
from protocol.rest import RequestError
from server.http_io import json_response, read_body
from server.services import Services
from storage.ids import new_id
from storage.records import UserRecord
from storage.timefmt import iso_utc

ALREADY_EXISTS = "Username already exists"


def _user(username: str, password_hash: str) -> UserRecord:
    now = time.time()
    stamp = iso_utc(now)
    return UserRecord(new_id(int(now * 1000)), username, password_hash, stamp, stamp)


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
        user = (await svc.storage.get_users([username])).get(username)
        if user is None or not await svc.hasher.check(password, user.password_hash):
            raise RequestError(401, "Invalid credentials")
        return json_response({"token": svc.tokens.issue(user.username), "username": user.username})

    @bp.post("/login-batch")
    async def login_batch() -> Response:
        pairs = rest.credential_list(await read_body(), svc.limits)
        users = await svc.storage.get_users([name for name, _ in pairs])
        known = [(name, password) for name, password in pairs if name in users]
        verdicts = iter(await svc.hasher.check_batch([(p, users[n].password_hash) for n, p in known]))
        results: list[dict[str, str]] = []
        errors: list[dict[str, str]] = []
        for name, _ in pairs:  # input order, as the original's sequential loop
            if name not in users:
                errors.append({"username": name, "error": "User not found"})
            elif next(verdicts):
                results.append({"username": name, "token": svc.tokens.issue(name)})
            else:
                errors.append({"username": name, "error": "Invalid password"})
        message = f"Batch login completed: {len(results)} successful, {len(errors)} errors"
        return json_response({"message": message, "results": results, "errors": errors})

    @bp.delete("/delete-all-users")
    async def delete_all_users() -> Response:
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
