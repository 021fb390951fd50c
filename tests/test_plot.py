"""`mimi roundtrip --plot`: a readable image, written atomically, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import run

from mimi_cli.plot import _mel_band_edges


def test_roundtrip_plot_is_a_png_with_three_panels(tmp_path, clip, weights_file):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    target = tmp_path / "cmp.png"
    result = run("roundtrip", clip, "--plot", target, "--json", weights=weights_file)
    assert result.returncode == 0, result.stderr
    image = imread(target)
    assert image.shape[0] > 800 and image.shape[1] > 1000  # 11 × 9 in at 110 dpi
    # down the middle: three tall coloured panels separated by white space (titles and labels are short runs)
    coloured = image[:, image.shape[1] // 2, :3].sum(axis=1) < 2.9
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], coloured.astype(int), [0]]))))[::2]
    assert np.count_nonzero(runs > 150) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["cmp.png"]  # no temporary file left


def test_a_home_that_cannot_be_written_changes_nothing_said(tmp_path, clip, weights_file):
    """A container run as another user has HOME=/: matplotlib logged "mkdir -p failed …" and "Matplotlib created
    a temporary cache directory …" on stderr, even under --json and -q. The plot is the same; nothing said."""
    pytest.importorskip("matplotlib")
    target = tmp_path / "cmp.png"
    result = run("roundtrip", clip, "--plot", target, "--json", "-q", weights=weights_file,
                 env_extra={"MPLCONFIGDIR": "/proc/no-such-folder/matplotlib"})  # not even root can make it
    assert result.returncode == 0 and result.stderr == "" and target.stat().st_size > 10_000, result.stderr


def test_plot_refusals_leave_no_file(tmp_path, clip, weights_file):
    result = run("roundtrip", clip, "--plot", tmp_path / "cmp.jpeg")
    assert result.returncode == 1 and "--plot writes .png, .svg or .pdf" in result.stderr
    result = run("roundtrip", clip, "--plot", "-", cwd=tmp_path)
    assert result.returncode == 1 and "--plot writes .png, .svg or .pdf, not to standard output" in result.stderr
    fake = tmp_path / "site"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ModuleNotFoundError('not here', name='matplotlib')\n")
    result = run("roundtrip", clip, "--plot", tmp_path / "cmp.png", "-o", tmp_path / "out.wav",
                 env_extra={"PYTHONPATH": str(fake)}, weights=weights_file)
    assert result.returncode == 1 and 'pip install "mimi-cli[plot]"' in result.stderr
    # a refused plot is refused before any work: -o was written by a run that then failed
    assert not (tmp_path / "cmp.png").exists() and not (tmp_path / "out.wav").exists()
    sf.write(tmp_path / "short.wav", np.zeros(500, np.float32), 24000)
    result = run("roundtrip", tmp_path / "short.wav", "--plot", tmp_path / "cmp.png", "-o", tmp_path / "out.wav",
                 weights=weights_file)
    assert result.returncode == 1 and "--plot needs at least 1024 samples" in result.stderr
    assert not (tmp_path / "cmp.png").exists() and not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("suffix", [".svg", ".pdf"])
def test_a_vector_plot_of_a_long_file_stays_small(tmp_path, suffix):
    """The spectrograms go into an SVG or PDF as images, the axes and text as vectors: 20 s of audio made an
    85 MB SVG, a path for each of 80 × 1,875 × 3 cells (5 minutes: 1.3 GB, four minutes to write)."""
    pytest.importorskip("matplotlib")
    from mimi_cli.plot import plot_roundtrip

    noise = np.random.default_rng(0).standard_normal((2, 20 * 24000)).astype(np.float32) * 0.1
    target = tmp_path / f"cmp{suffix}"
    plot_roundtrip(target, noise[0], noise[1], 24000, "a title")
    data = target.read_bytes()
    assert len(data) < 3_000_000, len(data)
    if suffix == ".svg":  # the meshes (and colour bars) as embedded images; the title's glyphs named in a comment
        assert data.count(b"<image ") >= 3 and b"<!-- a title -->" in data
    else:
        assert data.startswith(b"%PDF") and data.count(b"/Subtype /Image") >= 3
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_file_name_is_shown_as_written_never_read_as_tex(tmp_path, weights_file):
    """The title ends with the file's name, which matplotlib read as TeX between two "$": "x$\\foo{$.wav" failed
    the plot (and the run) with its parse error over four lines, "price $5 and $6.wav" showed as "price 5and6"."""
    pytest.importorskip("matplotlib")
    from conftest import speech_at

    from mimi_cli.pipeline import FileResult, Settings, Task, failed

    named = tmp_path / "x$\\foo{$.wav"
    sf.write(named, speech_at(24000)[:24000], 24000)
    result = run("roundtrip", named, "--plot", tmp_path / "cmp.svg", "--json", weights=weights_file)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "<!-- x$\\foo{$.wav -->" in (tmp_path / "cmp.svg").read_text()  # the name, glyph for glyph
    # and any library's error of several lines fails its file in one
    said = failed(Task(named, None), ValueError("\n\\foo{\n^\nParseFatalException"), Settings(kind="roundtrip"))
    assert isinstance(said, FileResult) and said.error == "ValueError: \\foo{ ^ ParseFatalException"


def test_mel_band_edges_increase_to_nyquist():
    edges = _mel_band_edges(24000)
    assert edges[0] == 0 and edges[-1] == 12000 and np.all(np.diff(edges) > 0)
