from __future__ import annotations

import typing as t

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream


class _MaxBodyStream(LimitedStream):
    """A body of unknown length, read up to the maximum; a byte more is a 413.

    werkzeug's own stream stops at the maximum and raises only if read again, which
    `get_data` never does: a chunked body over MAX_BODY_BYTES was cut and handled as whole.
    """

    _looked_past_limit = False

    def readinto(self, b: bytearray) -> int | None:  # type: ignore[override]
        count = super().readinto(b)
        if self.is_exhausted and not self._looked_past_limit:
            self._looked_past_limit = True
            if self._stream.read(1):
                raise RequestEntityTooLarge()
        return count


class BoundedRequest(Request):
    """A request whose body, with a length or chunked, is refused (413) over the maximum."""

    @cached_property
    def stream(self) -> t.IO[bytes]:
        limit = self.max_content_length
        if (not self.shallow and self.content_length is None and limit is not None
                and "wsgi.input_terminated" in self.environ):
            return t.cast(t.IO[bytes],
                          _MaxBodyStream(self.environ["wsgi.input"], limit, is_max=True))
        return super().stream
