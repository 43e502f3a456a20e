"""Audio as pictures: a waveform and a log-mel spectrogram, with the zero padding marked."""

from __future__ import annotations

import functools

import numpy as np

from .layout import PAPER, RED, SPEC_HEIGHT, WAVE_HEIGHT, WAVE_WIDTH


def waveform(clip: np.ndarray, true: int, rate: int) -> np.ndarray:
    """The clip's min/max envelope on a fixed -1..1 scale, one second per faint grid line."""
    import numpy as np

    samples = clip.astype(np.float32)
    starts = np.linspace(0, len(samples), WAVE_WIDTH + 1).astype(np.int64)[:-1].clip(0, max(len(samples) - 1, 0))
    low, high = np.minimum.reduceat(samples, starts), np.maximum.reduceat(samples, starts)
    scale = (WAVE_HEIGHT - 1) / 2
    top = np.round(scale * (1 - high.clip(-1, 1))).astype(np.int64)
    bottom = np.round(scale * (1 - low.clip(-1, 1))).astype(np.int64)
    y = np.arange(WAVE_HEIGHT)[:, None]
    image = np.full((WAVE_HEIGHT, WAVE_WIDTH, 3), PAPER, np.uint8)
    image[:, (np.arange(0, len(samples), rate) * WAVE_WIDTH // max(len(samples), 1))[1:]] = (225, 225, 225)
    image[int(scale)] = (200, 200, 200)
    image[(y >= top) & (y <= bottom)] = (31, 78, 121)
    return _mark_padding(image, true * WAVE_WIDTH // max(len(samples), 1))


def spectrogram(clip: np.ndarray, true: int, rate: int) -> np.ndarray:
    """Log-mel power (80 dB range below the clip's peak) in a dark-to-light colour map, low bands at the bottom."""
    import numpy as np

    n_fft = 1 << max(8, int(np.ceil(np.log2(rate * 0.064))))  # 64 ms windows: 1024 at 16 kHz
    hop = max(1, -(-len(clip) // WAVE_WIDTH))
    lead = max(n_fft // 2 - hop // 2, 0)  # frame k is centred on waveform column k
    padded = np.zeros(lead + hop * WAVE_WIDTH + n_fft, np.float32)
    padded[lead : lead + len(clip)] = clip
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:WAVE_WIDTH]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    db = 10 * np.log10(power @ _mel_filters(rate, n_fft, SPEC_HEIGHT).T + 1e-10)
    floor = max(float(db.max()) - 80, -100)  # 80 dB below the peak; silence (-100 dB) stays dark
    level = ((db - floor) / 80).clip(0, 1).T[::-1]  # (bands, columns), low frequencies last
    return _mark_padding(_colour(level), true * WAVE_WIDTH // max(len(clip), 1))


@functools.lru_cache(maxsize=4)
def _mel_filters(rate: int, n_fft: int, bands: int) -> np.ndarray:
    """Triangular filters on the HTK mel scale from 0 Hz to the Nyquist frequency, ``(bands, n_fft // 2 + 1)``."""
    import numpy as np

    mel = np.linspace(0, 2595 * np.log10(1 + rate / 2 / 700), bands + 2)
    edges = 700 * (10 ** (mel / 2595) - 1)
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    rising = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    falling = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    return np.maximum(0, np.minimum(rising, falling)).astype(np.float32)


_COLOURS = ((0, 0, 4), (40, 17, 89), (114, 31, 129), (183, 55, 121), (241, 96, 93), (254, 175, 119), (252, 253, 191))


def _colour(level: np.ndarray) -> np.ndarray:
    """Levels in 0..1 as RGB through a perceptually ordered (magma-like) map."""
    import numpy as np

    anchors = np.linspace(0, 1, len(_COLOURS))
    table = np.asarray(_COLOURS, np.float32)
    return np.stack([np.interp(level, anchors, table[:, c]) for c in range(3)], axis=-1).round().astype(np.uint8)


def _mark_padding(image: np.ndarray, start: int) -> np.ndarray:
    """Hatch the columns from ``start`` on (the zero padding) and draw a red line where it begins."""
    import numpy as np

    if start >= image.shape[1]:
        return image
    region = image[:, start:]
    y, x = np.mgrid[0 : region.shape[0], 0 : region.shape[1]]
    region[:] = (region * 0.45 + 140).astype(np.uint8)
    region[(x + y) % 8 == 0] = (120, 120, 120)
    image[:, max(start - 1, 0) : start + 1] = RED
    return image
