"""Decoders: media bytes, files or arrays into the store's fixed-size rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from .audio import AudioOptions, decode_audio
from .image import ImageOptions, decode_image


def decode_sample(
    payload: Any, media: str, clip: tuple[float | None, float | None] | None, image: ImageOptions, audio: AudioOptions
) -> dict[str, Any]:
    """Decode one sample into the values of its store row.

    Parameters
    ----------
    payload
        Bytes, a local path, or an array (mapping for audio).
    media
        ``"image"`` or ``"audio"``.
    clip
        For audio, the (start, end) seconds to cut; ignored for images.
    image, audio
        Decoding options.

    Returns
    -------
    dict
        ``images`` and ``image_size`` for an image; ``audio`` and
        ``audio_length`` for audio.
    """
    if media == "image":
        pixels, (height, width) = decode_image(payload, image)
        return {"images": pixels, "image_size": np.array([height, width], np.int32)}
    samples, length = decode_audio(payload, audio, clip)
    return {"audio": samples, "audio_length": np.int32(length)}
