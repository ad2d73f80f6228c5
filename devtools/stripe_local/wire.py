from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from typing import Any

# A subset of Stripe's currencies, enough to reject typos and uppercase codes the way Stripe does.
CURRENCIES = frozenset("aud brl cad chf czk dkk eur gbp jpy mxn nok nzd pln sek usd".split())
TRANSFER_CREATE_PARAMS = frozenset(
    "amount currency destination description metadata source_transaction source_type"
    " transfer_group expand".split()
)
TRANSFER_LIST_PARAMS = frozenset(
    "destination transfer_group limit starting_after ending_before expand".split()
)
MAX_IDEMPOTENCY_KEY_LENGTH = 255
_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_ID_ALPHABET = string.ascii_letters + string.digits
DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "Invalid API Key provided.",
    402: "Your card was declined.",
    403: "The provided key does not have the required permissions for this endpoint.",
    404: "Unrecognized request URL.",
    409: "There is currently another in-progress request using this Idempotent Key.",
    429: "Request rate limit exceeded. Learn more about rate limits here "
    "https://stripe.com/docs/rate-limits.",
}


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def mask_key(key: str) -> str:
    # Stripe shows only the key's prefix and last four characters in its 401 message.
    prefix, _, rest = key.rpartition("_")
    shown = rest[-4:] if len(rest) > 4 else ""
    return f"{prefix}_{'*' * max(len(rest) - len(shown), 4)}{shown}" if prefix else "*" * 8


def error_defaults(
    status: int, *, error_type: str | None, code: str | None, message: str | None
) -> tuple[str, str | None, str]:
    """Fill in the type, code and message Stripe gives an error of this status."""
    if error_type is None:
        error_type = "api_error" if status >= 500 else "invalid_request_error"
    if code is None and status == 429:
        code = "rate_limit"
    if message is None:
        message = DEFAULT_MESSAGES.get(
            status, "An unknown error occurred" if status >= 500 else "Invalid request."
        )
    return error_type, code, message


class StripeLocalError(Exception):
    """An error answered in Stripe's shape: {"error": {"type", "code", "message", "param"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        stored: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        # The outcome of a request Stripe began to carry out: kept under its idempotency key.
        self.stored = stored

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def key_from_authorization(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        # Basic auth carries the key as the user name and an empty password.
        return decoded.partition(":")[0] or None
    return None


def check_api_key(authorization: str | None, api_key: str) -> None:
    """Raise Stripe's 401 unless the Authorization header carries `api_key`."""
    key = key_from_authorization(authorization)
    if key is None:
        raise StripeLocalError(
            401,
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY').",
        )
    if not secrets.compare_digest(key.encode(), api_key.encode()):
        raise StripeLocalError(401, f"Invalid API Key provided: {mask_key(key)}")


def decode_params(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Decode Stripe's form encoding (`metadata[k]=v`, `expand[]=x`, `expand[0]=x`) into dicts."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        match = _KEY_RE.fullmatch(raw_key)
        if match is None:
            raise StripeLocalError(400, f"Invalid parameter name: {raw_key}", param=raw_key)
        name, brackets = match.groups()
        parts = re.findall(r"\[([^\[\]]*)\]", brackets)
        target, key = root, name
        for part in parts:
            container = target.setdefault(key, {})
            if not isinstance(container, dict):
                raise StripeLocalError(400, f"Invalid hash: {raw_key}", param=raw_key)
            target, key = container, part or str(len(container))
        if isinstance(target.get(key), dict):
            raise StripeLocalError(400, f"Invalid hash: {raw_key}", param=raw_key)
        target[key] = value
    return root


def reject_unknown(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise StripeLocalError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


def required_str(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise StripeLocalError(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )
    if not isinstance(value, str):
        raise StripeLocalError(
            400, f"Invalid string: {name}", code="parameter_invalid_string", param=name
        )
    return value


def optional_str(params: Mapping[str, Any], name: str) -> str | None:
    return required_str(params, name) if params.get(name) not in (None, "") else None


def positive_int(
    params: Mapping[str, Any], name: str, *, default: int | None = None, maximum: int | None = None
) -> int:
    if default is not None and params.get(name) in (None, ""):
        return default
    raw = required_str(params, name)
    if not re.fullmatch(r"-?\d+", raw):
        raise StripeLocalError(
            400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name
        )
    value = int(raw)
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and less than or equal to {maximum}" if maximum is not None else ""
        raise StripeLocalError(
            400,
            f"This value must be greater than or equal to 1{bound}.",
            code="parameter_invalid_integer",
            param=name,
        )
    return value


def metadata_param(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise StripeLocalError(400, "Invalid metadata: must be a hash of strings", param="metadata")
    return dict(value)


def expand_param(params: Mapping[str, Any], *, allowed: frozenset[str]) -> list[str]:
    value = params.get("expand")
    if value is None:
        return []
    if isinstance(value, dict):
        items = [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else -1)]
    else:
        items = [value]
    for item in items:
        if not isinstance(item, str) or item not in allowed:
            raise StripeLocalError(
                400, f"This property cannot be expanded ({item}).", param="expand"
            )
    return items

