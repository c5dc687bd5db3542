import pytest

from crashchat.video.frame_sampling import sample_frames


def test_same_rate_keeps_every_frame_with_real_timestamps() -> None:
    s = sample_frames(45, 10.0, fps=10)
    assert s.indices == list(range(45))
    assert s.timestamps[:3] == [0.0, 0.1, 0.2] and s.timestamps[-1] == pytest.approx(4.4)


def test_higher_source_rate_samples_segment_centres_at_target_fps() -> None:
    s = sample_frames(250, 25.0, fps=10)  # 10 s at 25 fps
    assert len(s.indices) == 100 - 4  # capped at 96 below
    s = sample_frames(125, 25.0, fps=10, max_frames=1000)  # 5 s
    assert len(s.indices) == 50
    assert s.indices[:4] == [1, 3, 6, 8]  # centres of 2.5-frame segments
    gaps = [b - a for a, b in zip(s.timestamps, s.timestamps[1:], strict=False)]
    assert all(0.079 <= g <= 0.121 for g in gaps)  # 2 or 3 source frames: ~10 fps
    assert s.timestamps[2] == pytest.approx(6 / 25)


def test_cap_is_uniform_and_applies_to_short_clips_too() -> None:
    # 30 s at 10 fps: upstream's code would keep 300 frames (30 s < 96); we cap at 96.
    s = sample_frames(300, 10.0, fps=10, max_frames=96)
    assert len(s.indices) == 96
    assert s.indices[0] == 0 and s.indices[-1] == 299
    gaps = {b - a for a, b in zip(s.indices, s.indices[1:], strict=False)}
    assert gaps <= {3, 4}


def test_lower_source_rate_and_minimum_frames() -> None:
    assert sample_frames(20, 5.0, fps=10).indices == list(range(20))
    s = sample_frames(3, 10.0, fps=10, min_frames=4)
    assert s.indices == [0, 1, 2]  # cannot invent frames
    s = sample_frames(40, 30.0, fps=1, min_frames=4)  # 1.3 s at 1 fps -> 1 frame -> widened to 4
    assert len(s.indices) == 4 and s.indices[0] == 0 and s.indices[-1] == 39


def test_rejects_empty_clips_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="no frames"):
        sample_frames(0, 10.0)
    with pytest.raises(ValueError, match="positive"):
        sample_frames(10, 0.0)
