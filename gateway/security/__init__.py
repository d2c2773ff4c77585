"""Identities and roles: the ``security:`` section and the :class:`Authority` that checks logins."""

from .authority import AuthenticationError, Authority, Identity, NotPermittedError
from .config import BUILTIN_ROLES, LockoutConfig, Permission, RoleConfig, SecurityConfig, UserConfig

__all__ = [
    "BUILTIN_ROLES",
    "AuthenticationError",
    "Authority",
    "Identity",
    "LockoutConfig",
    "NotPermittedError",
    "Permission",
    "RoleConfig",
    "SecurityConfig",
    "UserConfig",
]
