"""Tests for compress3d_lite.viz: the figures have the traces, sizes and colours they claim."""

import numpy as np
import plotly.graph_objects as go
import pytest

from compress3d_lite import viz
from compress3d_lite.config import SampleSpec
from compress3d_lite.data import make_toy_object, object_rng, toy_example
from compress3d_lite.data.io import atomic_write_bytes

SMALL = SampleSpec(n_points=512, n_uniform=1024, n_near=1024, views=2, resolution=32)


@pytest.fixture(scope="module")
def toy():
    obj = make_toy_object(seed=0, index=0)
    return obj, toy_example(obj, SMALL, object_rng(0, 0))


def _scene_is_y_up_cube(scene):
    assert scene.aspectmode == "cube"
    assert tuple(scene.xaxis.range) == (-1, 1) and scene.xaxis.visible is False
    assert (scene.camera.up.x, scene.camera.up.y, scene.camera.up.z) == (0, 1, 0)


# -- meshes --------------------------------------------------------------------------------


def test_mesh_figure_keeps_vertices_and_vertex_colours():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    fig = viz.mesh_figure(v, f, vertex_colors=np.array([[255, 0, 0]] * 4, np.uint8), title="tet")
    (trace,) = fig.data
    assert isinstance(trace, go.Mesh3d)
    assert len(trace.x) == 4 and list(trace.k) == [2, 3, 3, 3]
    assert list(trace.vertexcolor) == ["rgb(255,0,0)"] * 4
    _scene_is_y_up_cube(fig.layout.scene)
    # float colours in [0, 1] give the same strings as uint8
    fig2 = viz.mesh_figure(v, f, face_colors=np.array([[0.0, 0.5, 1.0]] * 4))
    assert fig2.data[0].facecolor[0] == "rgb(0,128,255)" and fig2.data[0].vertexcolor is None


def test_colored_mesh_figure_uses_part_colours(toy):
    obj, _ = toy
    cmesh = obj.colored_mesh()
    trace = viz.colored_mesh_figure(cmesh).data[0]
    assert len(trace.x) == len(cmesh.mesh.vertices) and len(trace.i) == len(cmesh.mesh.faces)
    expected = set(viz.rgb_strings(obj.part_colors))
    assert set(trace.facecolor) == expected


def test_mesh_bad_input():
    v = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"faces index vertices 0..2"):
        viz.mesh_figure(v, np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="not both"):
        viz.mesh_figure(v, np.array([[0, 1, 2]]), vertex_colors=np.zeros((3, 3)), face_colors=np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"vertex_colors must have shape \(3, 3\)"):
        viz.mesh_figure(v, np.array([[0, 1, 2]]), vertex_colors=np.zeros((2, 3)))


# -- points and occupancy ------------------------------------------------------------------


def test_points_figure_caps_points_and_is_seeded():
    pts = np.random.default_rng(0).uniform(-1, 1, (50_000, 3))
    fig = viz.points_figure(pts)
    (trace,) = fig.data
    assert isinstance(trace, go.Scatter3d) and len(trace.x) == 20_000
    assert np.array_equal(trace.x, viz.points_figure(pts).data[0].x)  # same seed, same subset
    assert len(viz.points_figure(pts, max_points=100).data[0].x) == 100
    assert len(viz.points_figure(pts[:10]).data[0].x) == 10  # fewer than the cap: all kept
    _scene_is_y_up_cube(fig.layout.scene)


def test_points_colour_strings():
    pts = np.zeros((3, 3))
    cols = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0], [0.2, 0.4, 0.6]])
    assert list(viz.points_figure(pts, cols).data[0].marker.color) == [
        "rgb(255,0,0)", "rgb(0,128,255)", "rgb(51,102,153)"]
    u8 = np.array([[255, 0, 0, 7], [0, 128, 255, 7], [51, 102, 153, 7]], np.uint8)  # alpha ignored
    assert list(viz.points_figure(pts, u8).data[0].marker.color)[1] == "rgb(0,128,255)"
    # colours follow their points through the subsampling
    pts = np.arange(300, dtype=float).reshape(100, 3)
    cols = np.repeat(np.linspace(0, 1, 100)[:, None], 3, axis=1)
    trace = viz.points_figure(pts, cols, max_points=10).data[0]
    for x, c in zip(trace.x, trace.marker.color):
        g = round(x / 3 / 99 * 255)
        assert c == f"rgb({g},{g},{g})"


def test_points_bad_input():
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\), got \(10, 2\)"):
        viz.points_figure(np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        viz.points_figure(np.zeros((2, 3)), np.full((2, 3), 200.0))
    with pytest.raises(ValueError, match=r"colors must have shape \(2, 3\)"):
        viz.points_figure(np.zeros((2, 3)), np.zeros((5, 3)))


def test_occupancy_figure_shows_inside_points():
    pts = np.random.default_rng(1).uniform(-1, 1, (1000, 3))
    labels = np.linalg.norm(pts, axis=1) < 0.5
    fig = viz.occupancy_figure(pts, labels)
    assert len(fig.data) == 1 and len(fig.data[0].x) == labels.sum()
    assert np.all(np.linalg.norm(np.c_[fig.data[0].x, fig.data[0].y, fig.data[0].z], axis=1) < 0.5)
    fig = viz.occupancy_figure(pts, labels.astype(np.float32), n_outside=50)
    assert [t.name for t in fig.data] == ["inside", "outside"] and len(fig.data[1].x) == 50
    with pytest.raises(ValueError, match="occ_labels"):
        viz.occupancy_figure(pts, labels[:10])


# -- slices ----------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_slices_frames_and_slider(axis):
    fig = viz.occupancy_slices(lambda p: np.linalg.norm(p, axis=1) < 0.6, axis=axis,
                               resolution=24, n_frames=7)
    assert len(fig.frames) == 7
    steps = fig.layout.sliders[0].steps
    assert [s.args[0][0] for s in steps] == [f.name for f in fig.frames]
    assert all(isinstance(f.data[0], go.Heatmap) for f in fig.frames)
    assert fig.layout.sliders[0].active == 3 and fig.data[0].z.shape == (24, 24)
    assert fig.frames[0].data[0].z.max() == 0 and fig.frames[3].data[0].z.max() == 1  # edge vs centre
    assert fig.layout.updatemenus[0].buttons[0].method == "animate"  # play button
    assert fig.data[0].z.dtype == np.uint8  # a boolean field travels as bytes
    field = viz.occupancy_slices(lambda p: p[:, 0], axis=axis, resolution=8, n_frames=2)
    assert field.data[0].z.dtype == np.float32 and field.data[0].zmin == pytest.approx(-1)


def test_slices_orientation_volume_matches_function():
    coords = np.linspace(-1, 1, 16)
    x, y, z = np.meshgrid(coords, coords, coords, indexing="ij")
    fn = lambda p: (p[:, 0] > 0.3) & (p[:, 1] < 0)  # noqa: E731  an asymmetric solid
    vol = fn(np.c_[x.ravel(), y.ravel(), z.ravel()]).reshape(16, 16, 16)
    for axis in "xyz":
        a = viz.occupancy_slices(vol, axis=axis, n_frames=5)
        b = viz.occupancy_slices(fn, axis=axis, resolution=16, n_frames=5)
        for fa, fb in zip(a.frames, b.frames):
            assert np.array_equal(fa.data[0].z, fb.data[0].z)
    # axis z: rows are y (vertical), columns x (horizontal): occupied where x > 0.3 and y < 0
    s = viz.occupancy_slices(fn, axis="z", resolution=16, n_frames=3).data[0].z
    assert s[0, -1] == 1 and s[-1, -1] == 0 and s[0, 0] == 0


def test_slices_bad_input():
    with pytest.raises(ValueError, match="cubic"):
        viz.occupancy_slices(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="n_frames"):
        viz.occupancy_slices(np.zeros((4, 4, 4)), n_frames=9)
    with pytest.raises(ValueError, match="axis"):
        viz.occupancy_slices(np.zeros((4, 4, 4)), axis="w", n_frames=2)


# -- images ----------------------------------------------------------------------------------


def _pixels(trace) -> np.ndarray:
    """The RGB pixels of a go.Image trace drawn from a PNG data URI."""
    import base64
    import io

    from PIL import Image

    assert isinstance(trace, go.Image) and trace.source.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(trace.source.split(",", 1)[1]))))


def test_image_grid_composites_alpha():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 0, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 100, 0, 128)  # half: 200 * 128/255 + 255 * 127/255 = 227.4
    rgba[1, 0] = (10, 20, 30, 0)  # transparent: the background
    fig = viz.image_grid([rgba], titles=["a"])
    (trace,) = fig.data
    z = _pixels(trace)
    assert z.shape == (2, 2, 3) and z.dtype == np.uint8
    assert z[0, 0].tolist() == [200, 100, 0]
    assert z[0, 1].tolist() == [227, 177, 127]
    assert z[1, 0].tolist() == [255, 255, 255]
    z_black = _pixels(viz.image_grid([rgba], background=(0, 0, 0)).data[0])
    assert z_black[1, 0].tolist() == [0, 0, 0] and z_black[0, 1].tolist() == [100, 50, 0]


def test_image_grid_layout_and_depth_maps(toy):
    _, ex = toy
    fig = viz.image_grid([*ex["images"], *ex["depths"]], titles=["rgb 0", "rgb 1", "depth 0", "depth 1"],
                         cols=2)
    assert [t.type for t in fig.data] == ["image", "image", "heatmap", "heatmap"]
    depth = fig.data[2].z
    assert np.isnan(depth[ex["depths"][0] == 0]).all()  # background is transparent
    assert np.allclose(depth[ex["depths"][0] > 0], ex["depths"][0][ex["depths"][0] > 0])
    assert fig.layout.coloraxis.cmin == pytest.approx(ex["depths"][ex["depths"] > 0].min())
    assert len(fig.layout.annotations) == 4  # the titles
    assert len(viz.image_grid(ex["images"]).data) == 2  # a (V, H, W, 4) batch is a list of images
    with pytest.raises(ValueError, match=r"image 0 must be"):
        viz.image_grid([np.zeros((4, 4, 2))])
    with pytest.raises(ValueError, match="titles"):
        viz.image_grid(ex["images"], titles=["one"])


# -- the overview and saving -----------------------------------------------------------------


def test_object_figure(toy):
    _, ex = toy
    fig = viz.object_figure(ex)
    assert [t.type for t in fig.data] == ["scatter3d", "scatter3d", "image"]
    assert len(fig.data[0].x) == len(ex["points"]) and len(fig.data[1].x) == ex["occ_labels"].sum()
    assert fig.data[0].scene == "scene" and fig.data[1].scene == "scene2"
    _scene_is_y_up_cube(fig.layout.scene2)
    no_views = {k: v for k, v in ex.items() if k not in ("images", "depths", "cam2world", "intrinsics")}
    assert [t.type for t in viz.object_figure(no_views).data] == ["scatter3d", "scatter3d"]


def test_save_html_is_atomic_and_standalone(tmp_path, monkeypatch):
    calls = []

    def spy(path, data):
        calls.append(path)
        return atomic_write_bytes(path, data)

    monkeypatch.setattr(viz.figures, "atomic_write_bytes", spy)
    fig = viz.points_figure(np.zeros((5, 3)))
    path = viz.save_html(fig, tmp_path / "sub" / "points.html")
    assert calls == [path]  # written through the temp-file-and-rename helper
    assert path == tmp_path / "sub" / "points.html"
    text = path.read_text()
    # the default works offline: plotly.js is embedded, nothing is fetched from a CDN
    assert 'src="https://cdn.plot.ly' not in text and len(text) > 1_000_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["points.html"]  # no temp file left
    cdn = viz.save_html(fig, tmp_path / "cdn.html", include_plotlyjs="cdn").read_text()
    assert 'src="https://cdn.plot.ly' in cdn and len(cdn) < 100_000


def test_compare_meshes_puts_each_mesh_in_its_own_scene_with_the_right_shading(toy):
    import trimesh

    obj, _ = toy
    ball = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    ball.visual.vertex_colors = np.tile([10, 200, 30, 255], (len(ball.vertices), 1)).astype(np.uint8)
    fig = viz.compare_meshes([ball, obj.colored_mesh(), None], ["generated", "truth", "nothing"])
    generated, truth, empty = fig.data
    assert generated.flatshading is False and len(generated.i) == len(ball.faces)
    assert set(generated.vertexcolor) == {"rgb(10,200,30)"}
    assert truth.flatshading is True and len(truth.facecolor) == len(obj.colored_mesh().mesh.faces)
    assert len(empty.i) == 0
    assert [generated.scene, truth.scene, empty.scene] == ["scene", "scene2", "scene3"]
    for scene in (fig.layout.scene, fig.layout.scene2, fig.layout.scene3):
        _scene_is_y_up_cube(scene)
    with pytest.raises(ValueError, match="titles"):
        viz.compare_meshes([ball], ["a", "b"])


# -- figures that render anywhere (viz.static, notebook.start) ---------------------------------


def _tiny_figure() -> go.Figure:
    return go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))


def test_the_static_renderer_stores_a_png_beside_the_interactive_figure(monkeypatch):
    import base64

    from compress3d_lite.viz import static

    calls = []
    monkeypatch.setattr(static.pio, "to_image", lambda fig, **kw: calls.append(kw) or b"\x89PNG fake")
    bundle = static.InteractiveAndPng().to_mimebundle(_tiny_figure().to_dict())
    assert set(bundle) == {"application/vnd.plotly.v1+json", "image/png"}
    assert base64.b64decode(bundle["image/png"]) == b"\x89PNG fake" and calls[0]["format"] == "png"
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["type"] == "scatter"


def test_the_static_renderer_stays_interactive_when_no_png_can_be_drawn(monkeypatch, caplog):
    from compress3d_lite.viz import static

    calls = []

    def no_browser(fig, **kw):
        calls.append(1)
        raise RuntimeError("no Chrome found\nlong traceback")

    monkeypatch.setattr(static.pio, "to_image", no_browser)
    renderer = static.InteractiveAndPng()
    with caplog.at_level("WARNING", logger=static.log.name):
        first = renderer.to_mimebundle(_tiny_figure().to_dict())
        second = renderer.to_mimebundle(_tiny_figure().to_dict())
    assert set(first) == set(second) == {"application/vnd.plotly.v1+json"}
    assert len(calls) == 1  # tried once, then off for the session
    assert "static figure images are off" in caplog.text and "no Chrome found" in caplog.text
    assert "long traceback" not in caplog.text


def test_static_figures_are_off_on_colab_and_when_asked(monkeypatch):
    import sys

    from compress3d_lite.viz import static

    monkeypatch.setattr(static.importlib.util, "find_spec", lambda name: object())  # kaleido "installed"
    monkeypatch.delenv(static.STATIC_ENV, raising=False)
    assert static.static_figures_wanted()
    monkeypatch.setenv(static.STATIC_ENV, "0")
    assert not static.static_figures_wanted()
    monkeypatch.delenv(static.STATIC_ENV)
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert not static.static_figures_wanted()
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.setattr(static.importlib.util, "find_spec", lambda name: None)  # no kaleido
    assert not static.static_figures_wanted()


def test_notebook_start_seeds_and_sets_the_renderer(monkeypatch, capsys):
    import plotly.io as pio
    import torch

    from compress3d_lite import notebook
    from compress3d_lite.viz import static

    monkeypatch.setenv("C3D_FAST", "1")
    monkeypatch.setattr(static, "static_figures_wanted", lambda: True)
    monkeypatch.setattr(static, "start_browser", lambda: None)  # no real browser in this test
    monkeypatch.setattr(pio.renderers, "default", pio.renderers.default)  # restored afterwards
    threads = torch.get_num_threads()
    try:
        fast, device = notebook.start(seed=3)
        a = torch.rand(2)
        notebook.start(seed=3)
        assert torch.equal(a, torch.rand(2))  # seeded
    finally:
        torch.set_num_threads(threads)
    assert fast is True and device in ("cpu", "cuda", "mps")
    assert pio.renderers.default == static.RENDERER
    assert "fast mode True | figures interactive + PNG" in capsys.readouterr().out


def test_a_real_png_when_kaleido_finds_a_browser():
    """The exporter itself, end to end; skipped on a machine with no kaleido or no Chrome/Chromium."""
    pytest.importorskip("kaleido")
    import plotly.io as pio

    try:
        png = pio.to_image(_tiny_figure(), format="png", width=200, height=150)
    except Exception as e:  # noqa: BLE001 - kaleido's many ways to find no browser
        pytest.skip(f"kaleido could not draw here: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_your_turn_waits_for_the_learner_and_fails_a_wrong_answer(capsys):
    from compress3d_lite.notebook import your_turn

    def not_yet():
        raise NotImplementedError

    assert your_turn(not_yet, "solutions/x.ipynb") is False
    assert "Your turn" in capsys.readouterr().out
    assert your_turn(lambda: None, "solutions/x.ipynb") is True
    assert "Correct" in capsys.readouterr().out

    def wrong():
        assert 1 + 1 == 3, "your IoU is 0.5, the library's 0.4"

    with pytest.raises(AssertionError, match="library's 0.4"):
        your_turn(wrong, "solutions/x.ipynb")


def test_a_2d_map_is_named_by_its_value_not_always_depth():
    alpha = np.zeros((8, 8), np.uint8)
    alpha[2:6, 2:6] = 255
    fig = viz.image_grid([alpha], titles=["alpha"], value_name="alpha")
    assert fig.layout.coloraxis.colorbar.title.text == "alpha"
    assert fig.data[0].hovertemplate.startswith("alpha")
    assert viz.image_grid([alpha.astype(float)]).layout.coloraxis.colorbar.title.text == "depth"  # the default
