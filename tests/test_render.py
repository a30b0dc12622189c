"""Rendering: rgb_array pictures drawn with numpy, human mode with matplotlib, and the Gymnasium
and Stable-Baselines3 tools that ask for frames (RenderCollection, RecordVideo, make_vec_env)."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import subset_rl.envs as E
from subset_rl.envs.base import BAD, CHOSEN, FORBIDDEN, GOOD, MISSING, WHITE, cell_size

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sensor": ("subset_rl/SensorPlacement-v0",
               {"k": 5, "shape": (8, 8), "rank": 5, "forbidden": [0, 9], "n_train": 60,
                "n_test": 20}),
    "features": ("subset_rl/FeatureAcquisition-v0", {"k": 12}),
    "features_wine": ("subset_rl/FeatureAcquisition-v0",
                      {"dataset": "wine", "k": 3, "free_features": [0]}),
    "knn": ("subset_rl/KNNVoting-v0", {"n": 20, "k": 3}),
    "blackbox": ("subset_rl/BlackBoxSubset-v0",
                 {"f": "numpy:sum", "n": 10, "k": 3, "forbidden": [2, 3]}),
}
IDS = sorted(CASES)


def make(case: str, **extra: Any) -> gym.Env:
    env_id, kwargs = CASES[case]
    return gym.make(env_id, **{**kwargs, **extra})


def cells_of(frame: np.ndarray, color: np.ndarray) -> int:
    """Number of pixels of exactly this colour."""
    return int((frame == color).all(-1).sum())


@pytest.mark.parametrize("case", IDS)
def test_rgb_array_frames(case: str) -> None:
    env = make(case, render_mode="rgb_array")
    assert env.metadata["render_modes"] == ["human", "rgb_array"]
    assert env.metadata["render_fps"] > 0
    env.reset(seed=0)
    before = env.render()
    assert isinstance(before, np.ndarray) and before.dtype == np.uint8 and before.ndim == 3
    height, width, channels = before.shape
    assert channels == 3 and height % 16 == 0 and width % 16 == 0
    env.step(env.action_space.sample())
    after = env.render()
    assert after.shape == before.shape and not np.array_equal(after, before)
    env.reset(seed=1)
    env.step(env.action_space.sample())
    assert env.render().shape == before.shape  # same size every frame: frames make a video
    env.close()


@pytest.mark.parametrize("case", IDS)
def test_gymnasium_check_env_with_render_check(case: str) -> None:
    env = make(case, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env)
    assert [str(w.message) for w in caught] == []


def test_sensor_frame_marks_the_chosen_cells() -> None:
    env = make("sensor", render_mode="rgb_array")
    env.reset(seed=0)
    z = env.unwrapped.objective.qr_placement()
    env.step(z)
    frame = env.render()
    cell = cell_size(8, 8)
    top, left = np.argwhere((frame != 255).any(-1)).min(0)  # the first panel's corner
    for index in range(64):
        row, col = divmod(index, 8)
        centre = frame[top + row * cell + cell // 2, left + col * cell + cell // 2]
        if z[index]:
            np.testing.assert_array_equal(centre, WHITE)
        elif index in (0, 9):
            np.testing.assert_array_equal(centre, FORBIDDEN)
        else:
            assert not (centre == WHITE).all()
    # A worse placement reconstructs worse: the error panel (the last) is brighter.
    env.reset(seed=0)
    bad = np.zeros(64, np.int8)
    bad[[10, 11, 12, 13, 14]] = 1  # five neighbours in one row
    env.step(bad)
    worse = env.render()
    third = slice(frame.shape[1] * 2 // 3, None)
    assert worse[:, third].astype(float).mean() > frame[:, third].astype(float).mean()


def test_features_frame_shows_only_what_the_classifier_saw() -> None:
    env = make("features", render_mode="rgb_array")
    assert env.unwrapped.image_shape == (8, 8)
    env.reset(seed=0)
    cell = cell_size(8, 8)
    assert cells_of(env.render(), MISSING) == 64 * cell * cell  # nothing acquired yet
    env.step(env.action_space.sample())
    frame = env.render()
    assert cells_of(frame, MISSING) == (64 - 12) * cell * cell  # one dark-blue cell per unseen
    assert cells_of(frame, GOOD) > 0  # the true class's bar


def test_features_image_shape_argument() -> None:
    env = make("features_wine", render_mode="rgb_array", image_shape=(1, 13))
    assert env.unwrapped.image_shape == (1, 13)
    with pytest.raises(ValueError, match=r"image_shape: expected \(rows, cols\) with rows \* cols"):
        make("features_wine", image_shape=(3, 3))


def test_knn_frame_colours_chosen_candidates_by_label() -> None:
    env = make("knn", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frame = env.render()
    context, z = env.unwrapped._last_context, env.unwrapped._last_action
    labels = context.candidate_labels[0].numpy()
    same = labels[z != 0] == int(context.query_label[0])
    cell = cell_size(5, 4)
    good_cells = cells_of(frame, GOOD) // (cell * cell)
    bad_cells = cells_of(frame, BAD) // (cell * cell)
    assert good_cells >= int(same.sum()) and bad_cells == int((~same).sum())


def test_blackbox_frame_lights_the_chosen_items() -> None:
    env = make("blackbox", render_mode="rgb_array")
    env.reset(seed=0)
    cell = cell_size(3, 4)
    assert cells_of(env.render(), CHOSEN) == 0
    assert cells_of(env.render(), FORBIDDEN) == 2 * cell * cell
    env.step(np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0]))
    assert cells_of(env.render(), CHOSEN) == 3 * cell * cell


def test_render_mode_errors_and_none() -> None:
    with pytest.raises(ValueError, match=r"render_mode: expected None or one of"):
        with warnings.catch_warnings():  # Gymnasium's own warning about the unknown mode
            warnings.simplefilter("ignore", UserWarning)
            make("blackbox", render_mode="ansi")
    env = make("blackbox")
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="without a render_mode"):
        assert env.render() is None


def test_render_collection_gives_every_frame() -> None:
    env = make("blackbox", render_mode="rgb_array_list")  # Gymnasium wraps RenderCollection
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frames = env.render()
    assert len(frames) == 2 and all(f.dtype == np.uint8 for f in frames)


def test_human_mode_draws_in_a_matplotlib_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setitem(E.SubsetEnv.metadata, "render_fps", 1000)  # no real pauses
    env = make("blackbox", render_mode="human")
    env.reset(seed=0)  # draws
    assert env.render() is None
    fig, image = env.unwrapped._figure
    assert plt.fignum_exists(fig.number)
    env.step(np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0]))
    assert cells_of(np.asarray(image.get_array()), CHOSEN) > 0
    clone = pickle.loads(pickle.dumps(env.unwrapped))  # without the window
    assert clone._figure is None and clone.render_mode == "human"
    env.close()
    assert not plt.fignum_exists(fig.number)


def test_record_video_writes_a_file(tmp_path: Any) -> None:
    pytest.importorskip("moviepy")
    from gymnasium.wrappers import RecordVideo

    folder = tmp_path / "videos"
    env = RecordVideo(make("sensor", render_mode="rgb_array"), str(folder),
                      episode_trigger=lambda episode: episode < 2, disable_logger=True)
    for seed in range(3):
        env.reset(seed=seed)
        env.step(env.action_space.sample())
    env.close()
    videos = sorted(p.name for p in folder.glob("*.mp4"))
    assert videos == ["rl-video-episode-0.mp4", "rl-video-episode-1.mp4"]
    assert all((folder / v).stat().st_size > 0 for v in videos)


def test_sb3_make_vec_env_prints_no_render_warning() -> None:
    from stable_baselines3.common.env_util import make_vec_env

    import subset_rl.envs  # noqa: F401 - registers the ids

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for case in IDS:
            env_id, kwargs = CASES[case]
            venv = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs=kwargs)
            venv.reset()
            image = venv.render()  # SB3 tiles the envs' rgb_array frames
            assert image is not None and image.dtype == np.uint8
            venv.close()
    assert [str(w.message) for w in caught] == []
