"""Reading the uploaded file out of a multipart/form-data body, in memory."""

import asyncio

import httpx
import pytest

from chestct.uploads import ENVELOPE_BYTES, UploadError, read_upload


def multipart(files: dict[str, bytes], boundary: str = "chestct-boundary") -> tuple[str, bytes]:
    """Encode form fields as httpx would send them; return the Content-Type and the body."""
    request = httpx.Request(
        "POST", "http://127.0.0.1/predict", files={name: ("slice.png", data) for name, data in files.items()}
    )
    return request.headers["content-type"], request.read()


async def chunks(body: bytes, size: int = 1000):
    for start in range(0, len(body), size):
        yield body[start : start + size]


def read(content_type: str, body: bytes, max_bytes: int = 10_000, content_length: str | None = None) -> bytes:
    length = str(len(body)) if content_length is None else content_length
    return asyncio.run(read_upload(content_type, length, chunks(body), max_bytes))


def test_returns_the_file_bytes_unchanged():
    data = bytes(range(256)) * 20
    content_type, body = multipart({"file": data})

    assert read(content_type, body) == data


def test_ignores_other_fields():
    content_type, body = multipart({"comment": b"hello", "file": b"image bytes"})

    assert read(content_type, body) == b"image bytes"


def test_read_upload_missing_field_is_400():
    content_type, body = multipart({"image": b"image bytes"})

    with pytest.raises(UploadError, match="'file'") as caught:
        read(content_type, body)
    assert caught.value.status == 400


def test_two_file_fields_are_refused():
    boundary = "b0undary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc\r\n'
    body = (part + part + f"--{boundary}--\r\n").encode()

    with pytest.raises(UploadError, match="more than one") as caught:
        read(f"multipart/form-data; boundary={boundary}", body)
    assert caught.value.status == 400


@pytest.mark.parametrize("content_type", ["application/octet-stream", "multipart/form-data", "image/png", ""])
def test_read_upload_non_multipart_is_400(content_type):
    with pytest.raises(UploadError, match="multipart/form-data") as caught:
        read(content_type, b"\x89PNG....")
    assert caught.value.status == 400


def test_read_upload_streamed_excess_is_413():
    content_type, body = multipart({"file": b"x" * 10_001})

    # A missing Content-Length (chunked upload) leaves only the streaming check.
    with pytest.raises(UploadError, match="10,000 bytes") as caught:
        asyncio.run(read_upload(content_type, None, chunks(body), 10_000))
    assert caught.value.status == 413


def test_file_at_the_limit_is_accepted():
    content_type, body = multipart({"file": b"x" * 10_000})

    assert len(read(content_type, body)) == 10_000


def test_read_upload_declared_excess_is_413():
    consumed = []

    async def body():
        consumed.append(True)
        yield b"never read"

    with pytest.raises(UploadError) as caught:
        length = str(10_000 + ENVELOPE_BYTES + 1)
        asyncio.run(read_upload("multipart/form-data; boundary=x", length, body(), 10_000))
    assert caught.value.status == 413
    assert consumed == []


def test_other_fields_cannot_grow_the_body_without_bound():
    content_type, body = multipart({"padding": b"p" * (ENVELOPE_BYTES + 20_000), "file": b"small"})

    with pytest.raises(UploadError) as caught:
        read(content_type, body, content_length="")
    assert caught.value.status == 413


def test_malformed_body_is_a_400():
    body = b"--b\r\nthis is not a header line\r\n\r\n"

    with pytest.raises(UploadError, match="Malformed") as caught:
        read("multipart/form-data; boundary=b", body)
    assert caught.value.status == 400
