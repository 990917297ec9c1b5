"""Request bodies sent compressed (``Content-Encoding: gzip`` or ``deflate``), inflated under a cap.

A compressed body passes the request size limit as it arrives; what it inflates to is limited
again here: inflating stops one byte past the limit, so a compression bomb (a megabyte of gzip
that inflates to gigabytes) costs at most the limit in memory and answers 413.
"""

from __future__ import annotations

import zlib

from dyhead_serve.server.errors import ApiError

__all__ = ["CONTENT_ENCODINGS", "inflate"]

# The encodings tritonclient sends (``request_compression_algorithm``): gzip, and deflate in the
# zlib format (RFC 1950) as HTTP's "deflate" is defined.
CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decompressed, refused once it would exceed ``limit`` bytes.

    Raises:
        ApiError: 413 when the inflated body is larger than ``limit``, 400 when it is not a
            complete stream of ``encoding``, 415 for an encoding other than gzip or deflate.
    """
    wbits = CONTENT_ENCODINGS.get(encoding)
    if wbits is None:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Encoding {encoding[:40]!r} is not supported; send gzip, deflate or identity",
        )
    inflater = zlib.decompressobj(wbits)
    try:
        # max_length bounds the output whatever the compression ratio; the rest of the input
        # stays in unconsumed_tail, never inflated.
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "bad_request", f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"the request body inflates to more than {limit / 2**20:.1f} MiB (max_upload_mb)",
        )
    if not inflater.eof:
        raise ApiError(400, "bad_request", f"the {encoding} body ends before its compressed stream does")
    if inflater.unused_data:
        raise ApiError(400, "bad_request", f"the {encoding} body has data after its compressed stream")
    return data
