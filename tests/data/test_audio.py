"""Audio decoding: every skip reason from a real broken file, segments, resampling, mono."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.data.audio_files import broken_files, dominant_frequency, sine, write
from train.data.audio import SKIP_REASONS, AudioLimits, AudioSkipped, SkipCounter, load_audio
from train.data.manifest import Utterance


def _utt(path, **kw):
    return Utterance(id=str(path), audio=str(path), duration=kw.pop("duration", 1.0), **kw)


def test_each_broken_file_is_skipped_with_its_reason(tmp_path):
    files = broken_files(tmp_path)
    assert set(files) == set(SKIP_REASONS)
    for reason, path in files.items():
        with pytest.raises(AudioSkipped) as err:
            load_audio(_utt(path))
        assert err.value.reason == reason, (reason, str(err.value))


def test_limits_are_configurable(tmp_path):
    path = write(tmp_path / "two.wav", sine(300, 2.0))
    assert len(load_audio(_utt(path), AudioLimits(0.1, 30.0))) == 32000
    with pytest.raises(AudioSkipped, match="too_long"):
        load_audio(_utt(path), AudioLimits(0.1, 1.5))
    with pytest.raises(AudioSkipped, match="too_short"):
        load_audio(_utt(path), AudioLimits(2.5, 30.0))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_frequency_and_length(tmp_path, rate):
    path = write(tmp_path / f"s{rate}.flac", sine(440, 2.0, rate=rate), rate=rate)
    out = load_audio(_utt(path))
    assert abs(len(out) - 32000) <= 1
    assert abs(dominant_frequency(out) - 440) < 1.0
    assert out.dtype == np.float32


def test_stereo_is_mixed_to_mono(tmp_path):
    stereo = np.stack([sine(300, 1.0), sine(1200, 1.0)], axis=1)
    out = load_audio(_utt(write(tmp_path / "st.wav", stereo)))
    spectrum = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(len(out), 1 / 16000)
    assert {round(f) for f in freqs[np.argsort(spectrum)[-2:]]} == {300, 1200}
    np.testing.assert_allclose(out, stereo.mean(1), atol=1e-4)


class _CountingSoundFile(sf.SoundFile):
    frames_read = 0

    def read(self, frames=-1, *args, **kwargs):
        out = super().read(frames, *args, **kwargs)
        _CountingSoundFile.frames_read += len(out)
        return out


def test_segments_read_only_their_samples(tmp_path, monkeypatch):
    long_file = write(tmp_path / "three.flac", np.concatenate([sine(200, 2.0), sine(500, 3.0), sine(900, 2.0)]))
    monkeypatch.setattr("train.data.audio.sf.SoundFile", _CountingSoundFile)
    for (begin, end), freq in [((0.0, 2.0), 200), ((2.0, 5.0), 500), ((5.2, 6.8), 900)]:
        _CountingSoundFile.frames_read = 0
        out = load_audio(_utt(long_file, begin_time=begin, end_time=end))
        assert len(out) == int(round((end - begin) * 16000))
        assert abs(dominant_frequency(out) - freq) < 2
        assert _CountingSoundFile.frames_read == len(out)  # not the whole 7 s file


def test_segment_outside_the_file_is_empty(tmp_path):
    path = write(tmp_path / "one.wav", sine(300, 1.0))
    with pytest.raises(AudioSkipped, match="empty"):
        load_audio(_utt(path, begin_time=5.0, end_time=6.0))


def test_segment_of_a_resampled_file(tmp_path):
    path = write(tmp_path / "44k.wav", np.concatenate([sine(300, 1.0, 44100), sine(700, 1.0, 44100)]), rate=44100)
    out = load_audio(_utt(path, begin_time=1.0, end_time=2.0))
    assert abs(len(out) - 16000) <= 1 and abs(dominant_frequency(out) - 700) < 2


def test_ogg_and_mp3_where_libsndfile_has_them(tmp_path):
    formats = sf.available_formats()
    for fmt, ext in (("OGG", "ogg"), ("MP3", "mp3")):
        if fmt not in formats:
            continue
        path = write(tmp_path / f"a.{ext}", sine(440, 1.0))
        out = load_audio(_utt(path))
        assert abs(len(out) - 16000) < 1200  # codec priming/padding
        assert abs(dominant_frequency(out) - 440) < 3


def test_skip_counter_merges():
    a, b = SkipCounter(["missing", "too_long"]), SkipCounter(["missing"])
    a += b
    assert a == {"missing": 2, "too_long": 1}
    assert a.report() == "skipped 2 missing, 1 too_long"
    assert SkipCounter().report() == "no clips skipped"
