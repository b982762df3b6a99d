"""Masking secrets (passwords in URLs, secret-named settings) before anything is shown or logged."""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@  (the password runs to the last '@' before a space, '/' or quote)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:@/'\"]*:)[^\s/'\"]*@")
# Names whose values are secrets, in `key=value` text and in `extra=` fields.
_SECRET_NAME = r"[\w-]*(?:password|passwd|secret|hmac_key)[\w-]*"
_KEY_SECRET = re.compile(
    rf"(?P<head>\b{_SECRET_NAME}['\"]?\s*[=:]\s*['\"]?)(?P<val>[^\s'\",}}&]+)", re.IGNORECASE
)
_SECRET_KEY = re.compile(_SECRET_NAME, re.IGNORECASE)
_MASK = "***"

def mask_secrets(text: str) -> str:
    """Replace passwords in URLs and `password=`-style pairs with `***`.

    >>> mask_secrets("cannot reach redis://worker:s3cret@redis:6379/0 (timeout)")
    'cannot reach redis://worker:***@redis:6379/0 (timeout)'
    >>> mask_secrets("url='rediss://:p@ss@host:6380'")
    "url='rediss://:***@host:6380'"
    >>> mask_secrets("redis://127.0.0.1:6379/0 and http://host:80/a@b")
    'redis://127.0.0.1:6379/0 and http://host:80/a@b'
    >>> mask_secrets("auth failed password=hunter2 model_hmac_key: abc")
    'auth failed password=*** model_hmac_key: ***'
    """
    if "@" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + _MASK + "@", text)
    return _KEY_SECRET.sub(
        lambda m: m.group(0) if m.group("val") == _MASK else m.group("head") + _MASK, text
    )


def mask_value(key: str, value: Any, depth: int = 0) -> Any:
    """A copy of an `extra=` value with secrets masked, looking into dicts and lists.

    >>> mask_value("settings", {"redis_url": "redis://:pw@h", "model_hmac_key": "k", "shards": 2})
    {'redis_url': 'redis://:***@h', 'model_hmac_key': '***', 'shards': 2}
    >>> mask_value("password", "hunter2"), mask_value("hosts", ["redis://u:p@a", 1])
    ('***', ['redis://u:***@a', 1])
    """
    if value and _SECRET_KEY.fullmatch(key):
        return _MASK
    if isinstance(value, str):
        return mask_secrets(value)
    if depth < 4 and isinstance(value, dict):
        return {k: mask_value(str(k), v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, (list, tuple)):
        return [mask_value(key, v, depth + 1) for v in value]
    return value
