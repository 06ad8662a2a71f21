"""Audio: every payload kind ends as mono float32 at the run's sampling rate."""

import base64
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile
from httpserver import serve

from vlmdata.errors import RowError
from vlmdata.media import MediaLoader, MediaOptions

SOURCE_RATE = 22050
DURATION = 0.5
TARGET_RATE = 16000


def stereo_sine() -> np.ndarray:
    """(frames, 2): 440 Hz on the left at 0.5, silence on the right, so the mono mix peaks at 0.25."""
    t = np.arange(int(SOURCE_RATE * DURATION)) / SOURCE_RATE
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([left, np.zeros_like(left)], axis=1).astype(np.float32)


def wav_bytes(samples=None, rate=SOURCE_RATE) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, stereo_sine() if samples is None else samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def assert_mono_sine(audio: dict) -> None:
    array = audio["array"]
    assert audio["sampling_rate"] == TARGET_RATE
    assert array.dtype == np.float32 and array.ndim == 1
    assert abs(len(array) - DURATION * TARGET_RATE) <= 2
    assert 0.23 < np.abs(array).max() < 0.27
    spectrum = np.abs(np.fft.rfft(array))
    assert abs(np.argmax(spectrum) * TARGET_RATE / len(array) - 440) < 5


def loader() -> MediaLoader:
    return MediaLoader(MediaOptions(audio_sampling_rate=TARGET_RATE, timeout=2.0, retries=0))


def test_wav_file_by_path_is_mono_resampled_float32(tmp_path):
    (tmp_path / "tone.wav").write_bytes(wav_bytes())
    assert_mono_sine(loader().load_audio({"path": "tone.wav"}, str(tmp_path)))


def test_wav_by_url(tmp_path):
    with serve({"/tone.wav": wav_bytes()}) as server:
        assert_mono_sine(loader().load_audio({"url": server.url("/tone.wav")}, None))


def test_wav_by_base64_and_embedded_bytes():
    data = wav_bytes()
    assert_mono_sine(loader().load_audio({"base64": base64.b64encode(data).decode()}, None))
    assert_mono_sine(loader().load_audio({"audio": {"bytes": data, "path": "tone.wav"}}, None))


def test_decoded_array_with_its_sampling_rate_is_resampled():
    assert_mono_sine(loader().load_audio({"audio": {"array": stereo_sine(), "sampling_rate": SOURCE_RATE}}, None))


def test_raw_array_is_taken_at_the_target_rate():
    samples = np.linspace(-1, 1, 800, dtype=np.float64)
    audio = loader().load_audio({"audio": samples}, None)
    assert audio["sampling_rate"] == TARGET_RATE
    assert audio["array"].dtype == np.float32
    np.testing.assert_allclose(audio["array"], samples, atol=1e-6)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_two_dimensional_arrays_are_mixed_down_whatever_their_layout(layout):
    stereo = np.stack([np.full(1000, 0.5), np.full(1000, -0.1)], axis=0)
    samples = stereo if layout == "channels_first" else stereo.T
    audio = loader().load_audio({"audio": samples}, None)
    assert audio["array"].shape == (1000,)
    np.testing.assert_allclose(audio["array"], 0.2, atol=1e-6)


def test_integer_pcm_arrays_are_scaled_to_unit_range():
    audio = loader().load_audio({"audio": np.array([16384, -32768], dtype=np.int16)}, None)
    np.testing.assert_allclose(audio["array"], [0.5, -1.0])


def test_corrupt_audio_file_is_rejected(tmp_path):
    data = wav_bytes()
    (tmp_path / "noise.wav").write_bytes(b"RIFF" + b"\x00" * 10 + data[40:200])
    with pytest.raises(RowError, match="cannot decode audio 'noise.wav'"):
        loader().load_audio({"path": "noise.wav"}, str(tmp_path))


def test_empty_audio_is_rejected(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(RowError, match="empty"):
        loader().load_audio({"path": str(tmp_path / "empty.wav")}, None)
    with pytest.raises(RowError, match="no samples"):
        loader().load_audio({"audio": np.zeros(0, dtype=np.float32)}, None)


def test_audio_part_without_payload_is_rejected():
    with pytest.raises(RowError, match="audio part has no payload"):
        loader().load_audio({"type": "audio", "audio_url": "x"}, None)


@pytest.mark.parametrize("rate", [1, 10**9])
def test_a_sampling_rate_that_cannot_be_resampled_is_rejected(rate):
    # Upsampling a long clip from 1 Hz to 16 kHz would need memory no machine has.
    with pytest.raises(RowError, match=f"sampling rate of {rate} Hz, outside the 1000..768000 Hz"):
        loader().load_audio({"audio": {"array": np.zeros(100_000, dtype=np.float32), "sampling_rate": rate}}, None)


@pytest.mark.parametrize("frames, channels", [(1, 2), (2, 3), (1, 6)])
def test_a_clip_shorter_than_its_channel_count_is_mixed_down_across_its_channels(tmp_path, frames, channels):
    # Each frame holds 0.5 on the first channel and silence elsewhere: the mix is 0.5 / channels per frame.
    samples = np.zeros((frames, channels), dtype=np.float32)
    samples[:, 0] = 0.5
    (tmp_path / "short.wav").write_bytes(wav_bytes(samples, rate=TARGET_RATE))

    audio = loader().load_audio({"path": "short.wav"}, str(tmp_path))

    assert audio["array"].shape == (frames,)
    np.testing.assert_allclose(audio["array"], 0.5 / channels, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 2])
def test_a_wav_without_a_frame_has_no_samples_and_warns_nothing(tmp_path, channels):
    (tmp_path / "silence.wav").write_bytes(wav_bytes(np.zeros((0, channels), dtype=np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RowError, match="^audio 'silence.wav' has no samples$"):
            loader().load_audio({"path": "silence.wav"}, str(tmp_path))
        with pytest.raises(RowError, match="^audio given as an array has no samples$"):
            loader().load_audio({"audio": {"array": np.zeros((channels, 0)), "sampling_rate": SOURCE_RATE}}, None)


@pytest.mark.parametrize("frames", [1, 7, 1000, SOURCE_RATE])
@pytest.mark.parametrize("rate", [8000, SOURCE_RATE, 44100, 48000])
def test_resampling_gives_what_librosa_gave(frames, rate):
    # Audio was resampled with librosa's default before: stored clips must keep their values and lengths.
    librosa = pytest.importorskip("librosa")
    samples = np.random.default_rng(frames).uniform(-1, 1, frames).astype(np.float32)

    audio = loader().load_audio({"audio": {"array": samples, "sampling_rate": rate}}, None)

    expected = librosa.resample(samples, orig_sr=rate, target_sr=TARGET_RATE)
    assert audio["array"].dtype == np.float32 and audio["array"].shape == expected.shape
    np.testing.assert_allclose(audio["array"], expected, atol=1e-6)


def test_loading_audio_imports_neither_librosa_nor_numba(tmp_path):
    # librosa compiles with numba on its first call in a fresh environment, which took half a minute.
    (tmp_path / "tone.wav").write_bytes(wav_bytes())
    code = (
        "import sys\n"
        "from vlmdata.media import MediaLoader, MediaOptions\n"
        f"audio = MediaLoader(MediaOptions(audio_sampling_rate={TARGET_RATE})).load_audio("
        f"{{'path': {str(tmp_path / 'tone.wav')!r}}}, None)\n"
        "print(audio['array'].shape, sorted({'librosa', 'numba'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"({int(DURATION * TARGET_RATE)},) []"
