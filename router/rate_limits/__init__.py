"""Requests and tokens per minute, per API key and per tenant (``rate_limits``, ``auth.api_keys[]``).

``limiter`` holds the ``RateLimiter`` protocol and the in-process implementation, ``redis_limiter``
the one replicas share, ``gate`` what the request path asks: admit a request or refuse it with the
delay after which it would be admitted, and correct the token estimate once the call is done.
"""

from tierwise.router.rate_limits.gate import Admission, KeyLimits, RateLimited, RateLimitGate
from tierwise.router.rate_limits.limiter import MemoryRateLimiter, RateLimiter
from tierwise.router.rate_limits.redis_limiter import RedisRateLimiter

__all__ = [
    "Admission",
    "KeyLimits",
    "MemoryRateLimiter",
    "RateLimitGate",
    "RateLimited",
    "RateLimiter",
    "RedisRateLimiter",
]
