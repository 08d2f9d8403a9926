"""``/api/auth/*`` against a real server: every status and body of contract §1.3 (1-5) and §2."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import jwt
import pytest
import trio

from tests.conftest import RunningServer, bearer, decode_token, make_config, signup_and_login, start_server


async def test_signup_created(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/auth/signup", json={"username": "Festive0_474255", "password": "p"})
    assert r.status_code == 201
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"message": "User created successfully", "username": "Festive0_474255"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "a"},
        {"password": "p"},
        {"username": "", "password": "p"},
        {"username": "a", "password": 0},
        {"username": None, "password": "p"},
        {"username": "a", "password": False},
    ],
)
async def test_signup_requires_both_fields(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    r = await client.post("/api/auth/signup", json=body)
    assert r.status_code == 400
    assert r.json() == {"error": "Username and password are required"}


async def test_signup_wrong_types_are_400_not_500(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/auth/signup", json={"username": "a", "password": 12345})
    assert r.status_code == 400
    assert r.json() == {"error": "Username and password must be strings"}


async def test_nul_in_a_username_is_400_for_signup_and_login(client: httpx.AsyncClient) -> None:
    for route in ("/api/auth/signup", "/api/auth/login"):
        r = await client.post(route, json={"username": "al\x00ice", "password": "pw"})
        assert (r.status_code, r.json()) == (400, {"error": "Username must not contain the character U+0000"})


async def test_signup_duplicate_is_409_and_does_not_poison_later_signups(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/auth/signup", json={"username": "a", "password": "p"})).status_code == 201
    r = await client.post("/api/auth/signup", json={"username": "a", "password": "q"})
    assert r.status_code == 409
    assert r.json() == {"error": "Username already exists"}
    # The original answered 409 to every later signup after one failure (contract §1.3-1); we do not.
    assert (await client.post("/api/auth/signup", json={"username": "b", "password": "p"})).status_code == 201
    r = await client.post("/api/auth/signup", json={"username": "A", "password": "p"})
    assert r.status_code == 201, "usernames are case-sensitive"


async def test_signup_accepts_urlencoded_forms(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/auth/signup", data={"username": "formuser", "password": "p"})
    assert r.status_code == 201
    assert r.json()["username"] == "formuser"


async def test_signup_other_content_type_counts_as_empty_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/auth/signup", content=b"username=a", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    assert r.json() == {"error": "Username and password are required"}


async def test_login_returns_contract_jwt(client: httpx.AsyncClient) -> None:
    await client.post("/api/auth/signup", json={"username": "alice", "password": "secret"})
    before = int(time.time())
    r = await client.post("/api/auth/login", json={"username": "alice", "password": "secret"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "username"} and body["username"] == "alice"
    assert jwt.get_unverified_header(body["token"]) == {"alg": "HS256", "typ": "JWT"}
    claims = decode_token(body["token"])
    assert list(claims) == ["username", "iat", "exp"]
    assert claims["username"] == "alice"
    assert before <= claims["iat"] <= before + 5
    assert claims["exp"] - claims["iat"] == 86400


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong"), ("nobody", "secret")])
async def test_login_bad_credentials_401(client: httpx.AsyncClient, username: str, password: str) -> None:
    await client.post("/api/auth/signup", json={"username": "alice", "password": "secret"})
    r = await client.post("/api/auth/login", json={"username": username, "password": password})
    assert r.status_code == 401
    assert r.json() == {"error": "Invalid credentials"}


async def test_login_requires_both_fields(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/auth/login", json={"username": "alice"})
    assert r.status_code == 400
    assert r.json() == {"error": "Username and password are required"}


async def test_passwords_truncate_at_72_bytes_like_bcryptjs(client: httpx.AsyncClient) -> None:
    long_password = "é" * 36 + "tail-that-bcrypt-never-sees"  # 72 UTF-8 bytes, then more
    await client.post("/api/auth/signup", json={"username": "long", "password": long_password})
    r = await client.post("/api/auth/login", json={"username": "long", "password": "é" * 36 + "other-tail"})
    assert r.status_code == 200
    r = await client.post("/api/auth/login", json={"username": "long", "password": "é" * 35})
    assert r.status_code == 401


async def test_signup_batch(client: httpx.AsyncClient) -> None:
    await client.post("/api/auth/signup", json={"username": "taken", "password": "p"})
    users = [{"username": n, "password": "p" + n} for n in ["u1", "taken", "u2", "u1"]]
    r = await client.post("/api/auth/signup-batch", json={"users": users})
    assert r.status_code == 201
    body = r.json()
    assert body["message"] == "Batch signup completed: 2 users created, 2 errors"
    assert [c["username"] for c in body["created"]] == ["u1", "u2"]
    assert all(isinstance(c["id"], str) and c["id"] for c in body["created"])
    # A name repeated inside one request is an error the second time (the original could store it twice).
    assert body["errors"] == [
        {"username": "taken", "error": "Username already exists"},
        {"username": "u1", "error": "Username already exists"},
    ]
    r = await client.post("/api/auth/login", json={"username": "u2", "password": "pu2"})
    assert r.status_code == 200


@pytest.mark.parametrize("route", ["/api/auth/signup-batch", "/api/auth/login-batch"])
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "Users array is required"),
        ({"users": []}, "Users array is required"),
        ({"users": "alice"}, "Users array is required"),
        (
            {"users": [{"username": "a", "password": "p"}, {"username": "b"}]},
            "All users must have username and password",
        ),
        ({"users": ["alice"]}, "All users must have username and password"),
        ({"users": [{"username": "a", "password": 7}]}, "All usernames and passwords must be strings"),
    ],
)
async def test_batch_validation(client: httpx.AsyncClient, route: str, body: dict[str, object], error: str) -> None:
    r = await client.post(route, json=body)
    assert r.status_code == 400
    assert r.json() == {"error": error}


async def test_signup_batch_rejected_whole_when_one_user_is_bad(client: httpx.AsyncClient) -> None:
    users = [{"username": "ok", "password": "p"}, {"username": "", "password": "p"}]
    assert (await client.post("/api/auth/signup-batch", json={"users": users})).status_code == 400
    r = await client.post("/api/auth/login", json={"username": "ok", "password": "p"})
    assert r.status_code == 401, "nothing of a rejected batch is stored"


async def test_login_batch(client: httpx.AsyncClient) -> None:
    users = [{"username": n, "password": "pw"} for n in ["x", "y"]]
    await client.post("/api/auth/signup-batch", json={"users": users})
    attempt = [
        {"username": "x", "password": "pw"},
        {"username": "ghost", "password": "pw"},
        {"username": "y", "password": "bad"},
        {"username": "y", "password": "pw"},
    ]
    r = await client.post("/api/auth/login-batch", json={"users": attempt})
    assert r.status_code == 200
    body = r.json()
    assert body["message"] == "Batch login completed: 2 successful, 2 errors"
    assert [res["username"] for res in body["results"]] == ["x", "y"]
    for res in body["results"]:
        assert decode_token(res["token"])["username"] == res["username"]
    assert body["errors"] == [
        {"username": "ghost", "error": "User not found"},
        {"username": "y", "error": "Invalid password"},
    ]


async def test_delete_all_users(client: httpx.AsyncClient) -> None:
    token = await signup_and_login(client, "admin")
    await client.post("/api/auth/signup", json={"username": "other", "password": "p"})
    r = await client.request("DELETE", "/api/auth/delete-all-users", json={"confirmationCode": "nope"})
    assert r.status_code == 400
    assert r.json() == {"error": "Invalid confirmation code. This is a dangerous operation!"}
    r = await client.request(
        "DELETE", "/api/auth/delete-all-users", json={"confirmationCode": "DELETE_ALL_USERS_CONFIRM"}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["message"] == "All users deleted successfully! Deleted: 2 users"
    assert body["deletedCount"] == 2
    assert body["timestamp"].endswith("Z")
    r = await client.post("/api/auth/login", json={"username": "admin", "password": "pw"})
    assert r.status_code == 401
    # Tokens are not checked against the user store (contract §1.1): the old token still works.
    assert (await client.get("/api/chatrooms", headers=bearer(token))).status_code == 200


async def test_single_signup_hashes_at_cost_10_and_batch_at_8(nursery: trio.Nursery, db_path: Path) -> None:
    """The contract's costs, read off the stored hashes (a dedicated server at the real costs)."""
    config = make_config(db_path, bcrypt_rounds=10, bcrypt_batch_rounds=8)
    running: RunningServer = await start_server(nursery, config)
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        await http.post("/api/auth/signup", json={"username": "single", "password": "p"})
        users = [{"username": "b1", "password": "p"}, {"username": "b2", "password": "q"}]
        await http.post("/api/auth/signup-batch", json={"users": users})
    stored = await running.server.storage.get_users(["single", "b1", "b2"])
    assert stored["single"].password_hash.startswith("$2b$10$")
    assert stored["b1"].password_hash.startswith("$2b$08$")
    # One salt for the whole batch, as the original: the first 29 characters (version, cost, salt) match.
    assert stored["b1"].password_hash[:29] == stored["b2"].password_hash[:29]
    await running.stop()
