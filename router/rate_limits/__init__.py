"""Requests and tokens per minute, per API key and per tenant (``rate_limits``, ``auth.api_keys[]``).

``limiter`` holds the ``RateLimiter`` protocol and the in-process implementation, ``redis_limiter``
the one replicas share, ``gate`` what the request path asks: admit a request or refuse it with the
delay after which it would be admitted, and correct the token estimate once the call is done.
"""
