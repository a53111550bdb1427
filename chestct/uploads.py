"""Reading one uploaded file from a multipart/form-data request body, in memory only.

Starlette's own form parser spools uploads over 1 MiB to a temporary file. CT slices are
patient data, so this module parses the body itself with python-multipart's streaming parser
and keeps the file's bytes in memory, counting them as they arrive so that an oversized
upload is refused before it is read completely.
"""

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

# Room for the multipart boundaries and part headers around the file itself.
ENVELOPE_BYTES = 64 * 1024


class UploadError(ValueError):
    """A request body without exactly one usable file; ``status`` is the HTTP status of the response."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _FilePart:
    """Collects the bytes of the form field named ``field`` from the parser's callbacks."""

    def __init__(self, field: str, max_bytes: int):
        self.field = field.encode()
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.found = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._collecting = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
        }

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._collecting = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") == self.field:
            if self.found:
                raise UploadError(400, f"The form has more than one '{self.field.decode()}' field; send one file.")
            self.found = self._collecting = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._collecting:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise UploadError(413, _too_large(self.max_bytes))
        self.chunks.append(data[start:end])


async def read_upload(
    content_type: str, content_length: str | None, body: AsyncIterator[bytes], max_bytes: int, field: str = "file"
) -> bytes:
    """Return the bytes of the form field ``field`` of a multipart/form-data body.

    Args:
        content_type: the request's Content-Type header.
        content_length: the request's Content-Length header, or None when absent.
        body: the request body, chunk by chunk (``Request.stream()``).
        max_bytes: largest accepted file, in bytes.
        field: name of the form field that carries the file.

    Raises:
        UploadError: 400 for a body that is not multipart/form-data, is malformed, or lacks
            the field or carries it twice; 413 for a file larger than ``max_bytes``.
    """
    media_type, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise UploadError(400, f"Send the image as multipart/form-data with the file in a field named '{field}'.")
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes + ENVELOPE_BYTES:
        raise UploadError(413, _too_large(max_bytes))

    part = _FilePart(field, max_bytes)
    parser = MultipartParser(boundary, part.callbacks())
    received = 0
    try:
        async for chunk in body:
            # Parts other than the file count too, so a body cannot grow without bound.
            received += len(chunk)
            if received > max_bytes + ENVELOPE_BYTES:
                raise UploadError(413, _too_large(max_bytes))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        raise UploadError(400, f"Malformed multipart/form-data body: {error}.") from None

    if not part.found:
        raise UploadError(400, f"The form has no '{field}' field; send the image in a field named '{field}'.")
    return b"".join(part.chunks)


def _too_large(max_bytes: int) -> str:
    return f"The file is larger than the limit of {max_bytes:,} bytes (inference.max_upload_bytes)."
