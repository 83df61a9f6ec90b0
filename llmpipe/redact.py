"""What never reaches a log, a metric or a card: credentials inside URLs."""

from urllib.parse import urlsplit


def url(text: str) -> str:
    """`text` without a user:password@ part, if it is a URL that has one."""
    parts = urlsplit(text)
    if not parts.hostname or "@" not in parts.netloc:
        return text
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
