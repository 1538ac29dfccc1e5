"""Registration and login."""

from __future__ import annotations

from bson import ObjectId

from smartgen.auth.passwords import hash_password, verify_password
from smartgen.errors import Unauthorized
from smartgen.store.base import Store, User
from smartgen.times import utcnow


async def register(*, store: Store, email: str, password: str) -> User:
    """Create an account; `Conflict` when the email is taken."""
    # ObjectId-shaped ids: the same shape as the Node original's user ids.
    user = User(
        user_id=str(ObjectId()),
        email=email,
        password_hash=await hash_password(password),
        created_at=utcnow(),
    )
    await store.users.create(user)
    return user


async def authenticate(*, store: Store, email: str, password: str) -> User:
    user = await store.users.get_by_email(email)
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok:
        raise Unauthorized("Wrong email or password", code="invalid_credentials")
    return user
