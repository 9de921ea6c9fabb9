"""The output formats and normalization strategies offered, by name only (imports no audio library)."""

OUTPUT_FORMATS = ("wav", "mp3")
NORMALIZATION_STRATEGIES = ("loudness", "clip", "peak", "rms")
