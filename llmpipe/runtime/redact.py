"""What never reaches a log, a metric or a card: credentials inside URLs, and values of settings named
like credentials."""

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

SECRET_NAME = re.compile(r"key|token|secret|password|signature|sig$", re.IGNORECASE)
# a setting's own name (`training.hub_token`); narrower than SECRET_NAME: `pad_token` or `max_new_tokens` are no secrets
SECRET_SETTING = re.compile(r"(^|[._])(hub_token|access_token|auth_token|api_key|password|secret)$", re.IGNORECASE)


def url(text: str) -> str:
    """`text` without a user:password@ part or secret-looking query values, if it is a URL that has them."""
    try:
        parts = urlsplit(text)
        if not parts.hostname:
            return text
        if "@" in parts.netloc:
            parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    except ValueError:  # URL-like but malformed (a bad port, an open bracket): keep nothing that may hold a secret
        return "<a URL that does not parse>" if "@" in text or "?" in text else text
    if parts.query:
        query = [(name, "***" if SECRET_NAME.search(name) else value) for name, value in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


def value(setting: Any) -> Any:
    """A recipe value as it may be shown: strings (also inside lists and mappings) through `url`."""
    if isinstance(setting, str):
        return url(setting)
    if isinstance(setting, (list, tuple)):
        return [value(item) for item in setting]
    if isinstance(setting, dict):
        return {key: value(item) for key, item in setting.items()}
    return setting


def setting(name: str, setting_value: Any) -> Any:
    """A flattened setting's value as it may be shown: "***" for a credential's name, else through `value`."""
    return "***" if SECRET_SETTING.search(name) and setting_value else value(setting_value)
