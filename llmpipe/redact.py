"""What never reaches a log, a metric or a card: credentials inside URLs."""

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

SECRET_NAME = re.compile(r"key|token|secret|password|signature|sig$", re.IGNORECASE)


def url(text: str) -> str:
    """`text` without a user:password@ part or secret-looking query values, if it is a URL that has them."""
    parts = urlsplit(text)
    if not parts.hostname:
        return text
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    if parts.query:
        query = [(name, "***" if SECRET_NAME.search(name) else value) for name, value in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()
