"""The smartgen HTTP API as the client sees it: bearer token, renewal, one-line errors."""

from __future__ import annotations

import getpass
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from smartgen import __version__
from smartgen.kit.text import printable
from smartgen.terminal.credentials import CredentialStore, _local_email
from smartgen.terminal.errors import ClientError, Unreachable


def printable_tree(value: Any) -> Any:
    """A JSON document with every string made safe for a terminal (`kit.text.printable`):
    generated text, titles and errors come from a model or another user, and an escape
    sequence in them could clear the screen, retitle the window or hide a link."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [printable_tree(v) for v in value]
    if isinstance(value, dict):
        return {printable(str(k)): printable_tree(v) for k, v in value.items()}
    return value


def job_path(job_id: str, *rest: str) -> str:
    """`/generate-content/<id>[/…]`, the id escaped (it comes from the command line)."""
    if job_id.strip(".") == "":  # "." and ".." would be resolved away by the URL
        raise ClientError(f"job {job_id} not found", status=404)
    return "/".join(("/generate-content", quote(str(job_id), safe=""), *rest))


def voice_path(voice_id: str) -> str:
    """`/voices/<id>`, the id escaped (it comes from the command line)."""
    if voice_id.strip(".") == "":
        raise ClientError(f"voice {voice_id} not found", status=404)
    return "/voices/" + quote(str(voice_id), safe="")


class Api:
    """The smartgen HTTP API with a bearer token that renews itself once when refused."""

    def __init__(
        self,
        url: str,
        *,
        creds: CredentialStore,
        email: str | None = None,
        password: str | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.creds = creds
        self.email = email.strip().lower() if email else None
        self.password = password
        self.token: str | None = None
        self._notice = notice or (lambda _msg: None)
        self.http = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(30.0, connect=5.0),
            headers={"User-Agent": f"smartgen-terminal/{__version__}"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Any = None,
        token: str | None,
        files: Any = None,
        data: Any = None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            if files is not None:  # a multipart upload (POST /batches)
                return await self.http.request(
                    method, path, files=files, data=data, params=params, headers=headers
                )
            return await self.http.request(method, path, json=body, params=params, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise Unreachable(
                f"cannot reach smartgen at {self.url}: is it running? start it with `make run`"
            ) from None
        except httpx.TimeoutException:
            raise ClientError(f"smartgen at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"request to {self.url} failed: {exc or type(exc).__name__}"
            ) from None

    def _result(self, r: httpx.Response) -> Any:
        try:
            data = printable_tree(r.json())
        except ValueError:
            data = None
        if r.is_success:
            if r.status_code == 204:
                return None
            if data is None:
                raise ClientError(
                    f"unexpected answer from {self.url} (HTTP {r.status_code}, not JSON):"
                    " is it a smartgen server?"
                )
            return data
        message = data.get("message") if isinstance(data, dict) else None
        message = str(message or r.reason_phrase or "error")
        if r.status_code == 401:
            message = f"authentication refused by {self.url}: {message}"
        elif r.status_code >= 500:
            message = f"smartgen at {self.url} failed (HTTP {r.status_code}): {message}"
        raise ClientError(message, status=r.status_code)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Any = None,
        files: Any = None,
        data: Any = None,
    ) -> Any:
        token = await self.ensure_token()
        extra = {"body": body, "params": params, "files": files, "data": data}
        r = await self._send(method, path, token=token, **extra)
        if r.status_code == 401:
            token = await self.ensure_token(refused=token)
            r = await self._send(method, path, token=token, **extra)
        return self._result(r)

    async def download(self, path: str, target: Path, *, params: Any = None) -> int:
        """GET `path` into the file `target` as it streams in; the bytes written."""
        token = await self.ensure_token()
        written = 0
        try:
            async with self.http.stream(
                "GET", path, params=params, headers={"Authorization": f"Bearer {token}"}
            ) as r:
                if not r.is_success:
                    await r.aread()
                    self._result(r)  # raises, saying why
                with target.open("wb") as out:
                    async for chunk in r.aiter_bytes():
                        out.write(chunk)
                        written += len(chunk)
        except httpx.HTTPError as exc:
            raise ClientError(f"download from {self.url} failed: {type(exc).__name__}") from None
        except OSError as exc:
            raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None
        return written

    async def _auth(self, path: str, email: str, password: str) -> Any:
        r = await self._send("POST", path, body={"email": email, "password": password}, token=None)
        return self._result(r)

    async def ensure_token(self, refused: str | None = None) -> str:
        """A token for this server: the stored one, else log in, else register a local user."""
        if self.token and self.token != refused:
            return self.token
        entry = self.creds.get(self.url)
        email = self.email or entry.get("email")
        same_user = bool(email) and email == entry.get("email")
        stored_token = entry.get("token") if same_user else None
        password_matches = self.password is None or self.password == entry.get("password")
        if stored_token and stored_token != refused and password_matches:
            self.token = str(stored_token)
            return self.token
        password = self.password or (entry.get("password") if same_user else None)
        if email and not password:
            if self.email is None:
                raise ClientError(
                    f"the stored token for {email} was refused by {self.url}:"
                    f" log in again with --email {email} --password …"
                )
            if not sys.stdin.isatty():
                raise ClientError("--password is required with --email", exit_code=2)
            password = getpass.getpass(f"password for {email} at {self.url}: ")
        if email and password:
            body = await self._login(email, str(password), local=same_user and entry.get("local"))
            new = {"email": email, "token": body["token"]}
            if same_user and entry.get("local") and password == entry.get("password"):
                new.update(password=password, local=True)  # only our own generated password
        else:
            body, new = await self._register_local()
        self.creds.put(self.url, new)
        self.token = str(body["token"])
        return self.token

    async def _login(self, email: str, password: str, *, local: Any) -> Any:
        try:
            return await self._auth("/auth/login", email, password)
        except ClientError as exc:
            if exc.status != 401 or not local:
                raise
        # A local user the server no longer knows (e.g. a fresh embedded database): recreate it.
        try:
            return await self._auth("/auth/register", email, password)
        except ClientError as exc:
            raise ClientError(
                f"authentication refused by {self.url} for {email}: {exc.message}"
            ) from None

    async def _register_local(self) -> tuple[Any, dict[str, Any]]:
        password = secrets.token_urlsafe(24)
        for suffix in ("", f"-{secrets.token_hex(3)}", f"-{secrets.token_hex(6)}"):
            email = _local_email(suffix)
            try:
                body = await self._auth("/auth/register", email, password)
            except ClientError as exc:
                if exc.status == 409:  # taken (another config dir registered it)
                    continue
                raise
            self._notice(f"registered local user {email} (credentials in {self.creds.path})")
            return body, {
                "email": email,
                "token": body["token"],
                "password": password,
                "local": True,
            }
        raise ClientError(f"could not register a local user at {self.url}")

    async def job(self, job_id: str) -> dict[str, Any]:
        try:
            job: dict[str, Any] = await self.call("GET", job_path(job_id))
        except ClientError as exc:
            if exc.status == 404:
                raise ClientError(f"job {job_id} not found", status=404) from None
            raise
        return job
