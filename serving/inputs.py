"""Upload checks that run before decoding: size bounds, and the bearer token."""

from __future__ import annotations

import hmac
import io
from http import HTTPStatus

from components.common.imaging import looks_like_dicom


class RejectedUpload(Exception):
    """An upload refused before classification; carries the HTTP status and a sentence for a person."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header only (no pixel decoding); None when the header is unreadable."""
    if looks_like_dicom(data):
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception:  # unreadable header: the decoder reports it properly
            return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width, img.height
    except Exception:
        return None


def check_size(data: bytes, max_bytes: int, max_pixels: int) -> None:
    """Refuse uploads larger than the configured bounds with 413 and the limit in words."""
    if len(data) > max_bytes:
        raise RejectedUpload(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"the file is {len(data) / 1e6:.1f} MB; this service accepts at most "
                             f"{max_bytes / 1e6:.1f} MB per slice")
    size = image_dimensions(data)
    if size and size[0] * size[1] > max_pixels:
        raise RejectedUpload(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"the image is {size[0]}x{size[1]} pixels; this service accepts at most "
                             f"{max_pixels} pixels (one CT slice is usually 512x512)")


def check_token(expected: str | None, authorization: str | None) -> None:
    """With a configured token, require `Authorization: Bearer <token>` (constant-time compare)."""
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise RejectedUpload(HTTPStatus.UNAUTHORIZED,
                             "this service needs the header 'Authorization: Bearer <token>' with a valid token")
