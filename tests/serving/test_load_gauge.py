"""The gauge file an autoscaler reads: written at once, rewritten whole on every change."""

import asyncio

from musicgen_cog.serving.drain import InFlight
from musicgen_cog.serving.load_gauge import METRICS_FILE_ENV, gauge_from_environment


def samples(text: str) -> dict[str, float]:
    """Prometheus text format: the value of each sample line."""
    return {name: float(value) for name, value in (line.split() for line in text.splitlines() if line[0] != "#")}


def test_no_file_unless_the_variable_names_one(monkeypatch):
    monkeypatch.delenv(METRICS_FILE_ENV, raising=False)
    assert gauge_from_environment(slots=8) is None


def test_the_file_follows_the_predictions_in_flight(monkeypatch, tmp_path):
    path = tmp_path / "metrics" / "musicgen.prom"
    monkeypatch.setenv(METRICS_FILE_ENV, str(path))
    in_flight = InFlight(on_change=gauge_from_environment(slots=8))
    assert samples(path.read_text()) == {"musicgen_predictions_in_flight": 0, "musicgen_prediction_slots": 8}

    async def prediction() -> float:
        with in_flight.admit():
            return samples(path.read_text())["musicgen_predictions_in_flight"]

    assert asyncio.run(prediction()) == 1
    assert samples(path.read_text())["musicgen_predictions_in_flight"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["musicgen.prom"]  # no temporary files left
