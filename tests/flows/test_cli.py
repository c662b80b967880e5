"""The ``trackset`` command line: one-line errors and exit codes before any video is touched."""

from __future__ import annotations

import pytest

from flows.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "h5.target_size=0"], "settings: h5.target_size: Input should be greater than 0"),
        (["--set", "h5.nope=1"], "settings: h5.nope: unknown key"),
        (["--set", "depth_camera.backend=real"], "backend 'real' for depth_camera needs the 'vipe' package"),
        (["--set", "hands.backend=real"], "backend 'real' for hands needs"),
    ],
)
def test_bad_settings_and_missing_models_fail_in_one_line(tmp_path, capsys, args, message):
    videos = tmp_path / "videos"
    code = main(["run", "--settings", "settings.yaml", "--set", f"paths.videos_dir={videos}",
                 "--set", f"paths.dataset_dir={tmp_path / 'dataset'}", *args])
    out = capsys.readouterr().out
    assert code == 2
    error_lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (tmp_path / "dataset").exists()  # nothing was touched
