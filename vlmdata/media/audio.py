"""Turning audio into what every audio model's feature extractor expects: mono float32 at one sampling rate.

Example:
    >>> samples, rate = decode_audio(open("speech.wav", "rb").read(), "'speech.wav'")  # doctest: +SKIP
    >>> prepare_audio(samples, rate, 16000, "'speech.wav'")["sampling_rate"]  # doctest: +SKIP
    16000
"""

from __future__ import annotations

import io

import numpy as np
import soundfile
import soxr

from vlmdata.errors import RowError

# Beyond these, a rate is a corrupt header or a hostile value: resampling 1 Hz audio to 16 kHz would make every
# sample sixteen thousand, enough to exhaust memory from a small file.
MIN_SAMPLING_RATE = 1000
MAX_SAMPLING_RATE = 768000


def decode_audio(data: bytes, label: str) -> tuple[np.ndarray, int]:
    """Decodes an audio file (WAV, FLAC, OGG, MP3, ... whatever libsndfile reads) held in memory, mixed down.

    Returns:
        (samples, sampling_rate), samples 1-D float32 in -1..1, the average of the file's channels.

    Raises:
        RowError: the bytes are empty, not a readable audio file, or a file without a single frame.
    """
    if not data:
        raise RowError(f"cannot decode audio {label}: the file is empty")
    try:
        samples, sampling_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
        raise RowError(f"cannot decode audio {label}: {reason}") from exc
    if samples.shape[0] == 0:
        raise RowError(f"audio {label} has no samples")
    # soundfile's layout is (frames, channels): the decoder says which axis holds the channels, even for a
    # clip shorter than its number of channels.
    return samples.mean(axis=1, dtype=np.float32), int(sampling_rate)


def prepare_audio(samples, sampling_rate: int, target_rate: int, label: str) -> dict:
    """Makes samples mono float32 at `target_rate`.

    Args:
        samples: a 1-D array, or 2-D with channels on the shorter axis (see `to_mono`). Integer PCM is scaled
            to -1..1.
        sampling_rate: the rate `samples` were recorded at.
        target_rate: the rate to return.
        label: how error messages name the audio.

    Returns:
        {"array": 1-D float32 array, "sampling_rate": target_rate}

    Raises:
        RowError: the samples are empty, not numbers, of more than two dimensions, or not finite, or they need
            resampling from a rate outside MIN_SAMPLING_RATE..MAX_SAMPLING_RATE.
    """
    array = as_float_samples(samples, label)
    if array.size == 0:  # checked before mixing down: the mean of no samples is NaN, with a warning
        raise RowError(f"audio {label} has no samples")
    mono = to_mono(array, label)
    if not np.isfinite(mono).all():
        raise RowError(f"audio {label} contains NaN or infinite samples")
    if isinstance(sampling_rate, float) and sampling_rate.is_integer():
        sampling_rate = int(sampling_rate)
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise RowError(f"audio {label} has an invalid sampling rate {sampling_rate!r}")
    if sampling_rate != target_rate:
        if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
            raise RowError(
                f"audio {label} has a sampling rate of {sampling_rate} Hz, outside the "
                f"{MIN_SAMPLING_RATE}..{MAX_SAMPLING_RATE} Hz that can be resampled"
            )
        mono = resample(mono, int(sampling_rate), target_rate)
    return {"array": np.ascontiguousarray(mono, dtype=np.float32), "sampling_rate": target_rate}


def as_float_samples(samples, label: str) -> np.ndarray:
    """Returns samples as float32, scaling integer PCM by its full range so that loudness is preserved."""
    try:
        array = np.asarray(samples)
    except (TypeError, ValueError) as exc:
        raise RowError(f"audio {label} is not an array of samples: {exc}") from exc
    if array.dtype.kind == "i":
        return (array / float(2 ** (8 * array.dtype.itemsize - 1))).astype(np.float32)
    if array.dtype.kind == "u":
        middle = float(2 ** (8 * array.dtype.itemsize - 1))
        return ((array - middle) / middle).astype(np.float32)
    if array.dtype.kind not in "fb":
        raise RowError(f"audio {label} is not an array of samples (dtype {array.dtype})")
    return array.astype(np.float32)


def to_mono(samples: np.ndarray, label: str) -> np.ndarray:
    """Averages the channels of an array a dataset holds, which says nothing of its layout: (channels, frames)
    as `datasets` and librosa have it, or (frames, channels) as soundfile has it. The channel axis is taken to
    be the shorter one; decoded files never come here, since their decoder says which axis it is."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise RowError(f"audio {label} has {samples.ndim} dimensions; expected 1 (mono) or 2 (channels)")
    channel_axis = 0 if samples.shape[0] <= samples.shape[1] else 1
    return samples.mean(axis=channel_axis, dtype=np.float32)


def resample(samples: np.ndarray, sampling_rate: int, target_rate: int) -> np.ndarray:
    """Resamples a mono signal with soxr's high-quality resampler, to ceil(frames * target / rate) frames.

    The quality and the length are those of `librosa.resample`'s default, which calls soxr the same way.
    """
    resampled = soxr.resample(samples, sampling_rate, target_rate, quality="HQ")
    frames = -(-len(samples) * target_rate // sampling_rate)
    # soxr rounds the length where librosa rounds it up, padding with silence: keep librosa's length.
    if len(resampled) < frames:
        resampled = np.pad(resampled, (0, frames - len(resampled)))
    return resampled[:frames].astype(np.float32, copy=False)
