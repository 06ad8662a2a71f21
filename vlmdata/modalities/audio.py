"""Audio: stored as mono float32 samples at convert's sampling rate, given to the processor as an array."""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

from vlmdata.errors import RowError
from vlmdata.media import MediaLoader
from vlmdata.modalities.base import Modality


class AudioModality(Modality):
    kind = "audio"
    column = "audios"
    source_columns = ("audios", "audio")
    feature = {"array": datasets.List(datasets.Value("float32")), "sampling_rate": datasets.Value("int32")}
    item = "clip"
    label = "audio clips"

    def load(self, payload: dict[str, Any], base_dir: str | None, loader: MediaLoader) -> dict[str, Any]:
        return loader.load_audio(payload, base_dir)

    def processor_part(self, stored: dict[str, Any], position: int, processor) -> dict[str, Any]:
        # The clips are stored at one rate; a processor that needs another would read them too fast or slow.
        extractor = getattr(processor, "feature_extractor", None)
        expected = getattr(extractor, "sampling_rate", None)
        if expected and stored["sampling_rate"] != expected:
            raise RowError(f"audio {position} is at {stored['sampling_rate']} Hz, the processor needs {expected} Hz")
        return {"type": "audio", "audio": np.asarray(stored["array"], dtype=np.float32)}


AUDIO = AudioModality()
