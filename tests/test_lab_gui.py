"""The lab's views in the window, driven as a user drives them, offscreen, on the real MNIST: the Draw tab,
the Adversarial tab (live attack, accuracy-vs-eps curve, fooled gallery, export) and saliency in the
digit detail. Models are trained once per module and opened in each test's window from their files.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from PyQt5 import QtCore, QtGui, QtWidgets
from PyQt5.QtTest import QTest

from mnistgui.core.config import Config
from mnistgui.core.workspace import Workspace

from .conftest import MNIST_DIR
from .test_responsiveness import GAP_METER, MAX_GAP

exec(GAP_METER)  # GapMeter, as the responsiveness tests define it

LOGREG = dict(train_size=20000, test_size=2000, epochs=2)
MLP = dict(hidden_sizes=(128, 64), init="he", use_bias=True, train_size=10000, test_size=2000, epochs=1)


def _trained_file(folder, model, **settings):
    workspace = Workspace(data_dir=str(MNIST_DIR))
    try:
        run = workspace.new_run(Config.for_model(model, **settings))
        for _ in workspace.train(workspace.training_job(run)):
            pass
        return str(workspace.save(run, str(folder / f"{model}.h5")))
    finally:
        workspace.close()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lab-models")
    return {"logreg": _trained_file(folder, "logreg", **LOGREG), "mlp": _trained_file(folder, "dropout_mlp", **MLP)}


def _open(qtbot, window, path):
    with qtbot.waitSignal(window.predictions_ready, timeout=120_000):
        assert window.open_model(path)
    return window.current


def _stroke(pad, points):
    """One stroke: a press, moves with the button held, a release (QTest's own mouseMove moves the cursor,
    which an offscreen platform does not turn into events)."""
    first, *rest = [QtCore.QPoint(*p) for p in points]
    QTest.mousePress(pad, QtCore.Qt.LeftButton, pos=first)
    for point in rest:
        event = QtGui.QMouseEvent(QtCore.QEvent.MouseMove, QtCore.QPointF(point), QtCore.Qt.NoButton,
                                  QtCore.Qt.LeftButton, QtCore.Qt.NoModifier)
        QtWidgets.QApplication.sendEvent(pad, event)
    QTest.mouseRelease(pad, QtCore.Qt.LeftButton, pos=rest[-1] if rest else first)


def _line(start, end, n=25):
    return [(round(start[0] + (end[0] - start[0]) * t), round(start[1] + (end[1] - start[1]) * t))
            for t in np.linspace(0, 1, n)]


def _centre_of_mass(image):
    values = image.astype(np.float64)
    rows, cols = np.indices(values.shape)
    return (rows * values).sum() / values.sum(), (cols * values).sum() / values.sum()


# --- the Draw tab -------------------------------------------------------------------------------------


def test_drawing_a_one_is_centred_classified_and_explained(qtbot, window, model_files):
    _open(qtbot, window, model_files["logreg"])
    view = window.draw_view
    window.tabs.setCurrentWidget(view)
    assert view.digit is None and not view.undo_button.isEnabled()
    _stroke(view.pad, _line((150, 40), (160, 240)))  # a long vertical stroke, off-centre
    qtbot.waitUntil(lambda: view.probs is not None and view.saliency.explanation is not None, timeout=60_000)
    digit = view.digit
    assert digit.shape == (28, 28) and digit.dtype == np.uint8 and digit.max() == 255
    assert view.input_pane.values.shape == (28, 28) and view.input_pane.values.max() == 1.0  # what the model sees
    row, col = _centre_of_mass(digit)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1, (row, col)
    ink_rows = np.flatnonzero(digit.max(axis=1) > 0.3 * 255)
    assert 19 <= ink_rows[-1] - ink_rows[0] + 1 <= 21  # scaled to MNIST's 20-pixel box
    probs = view.probs
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-5 and probs.min() >= 0
    assert int(np.argmax(probs)) == 1 and view.verdict.text().startswith("<b>1</b>")
    explanation = view.saliency.explanation
    assert explanation.target == 1 and explanation.predicted == 1
    heat = view.saliency.heat_map()
    assert heat.shape == (28, 28) and np.abs(heat).max() == pytest.approx(1.0)
    # The gradient of the "1" score is positive on the stroke on average: more ink there, more "1".
    assert explanation.gradient[digit > 128].mean() > 0


def test_undo_and_clear(qtbot, window, model_files):
    _open(qtbot, window, model_files["logreg"])
    view = window.draw_view
    window.tabs.setCurrentWidget(view)
    window.activateWindow()
    _stroke(view.pad, _line((140, 40), (140, 240)))
    qtbot.waitUntil(lambda: view.probs is not None, timeout=60_000)
    one = view.digit.copy()
    _stroke(view.pad, _line((60, 40), (220, 40)))  # a bar across the top
    qtbot.waitUntil(lambda: view.digit is not None and not np.array_equal(view.digit, one), timeout=10_000)
    assert len(view.pad.strokes) == 2
    view.undo_button.click()
    qtbot.waitUntil(lambda: np.array_equal(view.digit, one), timeout=10_000)  # exactly the first stroke again
    assert len(view.pad.strokes) == 1
    QTest.keyClick(view.pad, QtCore.Qt.Key_Z, QtCore.Qt.ControlModifier)  # Ctrl+Z is undo too
    qtbot.waitUntil(lambda: view.digit is None, timeout=10_000)
    assert view.pad.strokes == [] and view.pad.ink().max() == 0
    _stroke(view.pad, _line((140, 40), (140, 240)))
    qtbot.waitUntil(lambda: view.probs is not None, timeout=60_000)
    view.clear_button.click()
    qtbot.waitUntil(lambda: view.digit is None, timeout=10_000)
    assert view.probs is None and view.pad.ink().max() == 0 and view.input_pane.values is None
    assert not view.clear_button.isEnabled() and not view.features_button.isEnabled()
    assert view.saliency.explanation is None


def test_a_drawn_digit_opens_in_the_feature_map_viewer_and_the_attack(qtbot, window, model_files):
    _open(qtbot, window, model_files["mlp"])
    view = window.draw_view
    window.tabs.setCurrentWidget(view)
    _stroke(view.pad, _line((150, 40), (150, 240)))
    qtbot.waitUntil(lambda: view.probs is not None, timeout=60_000)
    view.features_button.click()
    filters = window.filters
    assert window.tabs.currentWidget() is filters
    qtbot.waitUntil(lambda: filters.layer_outputs is not None and filters.tile_count > 0, timeout=60_000)
    assert np.array_equal(filters.custom_image, view.digit.reshape(-1))
    assert "drawn digit" in filters.info.text()
    # The tiles are the drawn digit's activations, not a test image's.
    weights = filters.snapshots[-1][1]
    expected = filters.layer_outputs(weights, view.digit.reshape(1, -1))[filters.layer_box.currentData()][0]
    assert filters.tile_count == 1 and np.allclose(filters.current_tiles().reshape(-1)[: expected.size], expected)
    filters.image_spin.setValue(3)  # choosing a test image returns to the test images
    assert filters.custom_image is None and "test image 3" in filters.info.text()

    view.attack_button.click()
    attack = window.attack_view
    assert window.tabs.currentWidget() is attack and attack.source_box.currentData() == "drawn"
    qtbot.waitUntil(lambda: attack.live is not None and np.allclose(attack.live["x"], view.digit.reshape(-1) / 255.0),
                    timeout=60_000)
    assert attack.original_pane.caption.text() == "drawn digit"
    assert attack.live["aim"] == int(np.argmax(view.probs))  # away from what the model sees in it


def test_without_a_model_the_views_say_so(qtbot, window):
    view = window.draw_view
    window.tabs.setCurrentWidget(view)
    _stroke(view.pad, _line((140, 40), (140, 240)))
    qtbot.waitUntil(lambda: "train or open a model first" in view.status.text(), timeout=10_000)
    assert view.probs is None and view.digit is not None  # the drawing itself is kept
    attack = window.attack_view
    window.tabs.setCurrentWidget(attack)
    assert not attack.compute_button.isEnabled() and attack.compute_curve() is False
    qtbot.waitUntil(lambda: "train or open a model first" in attack.live_status.text(), timeout=10_000)


def test_hidden_views_ask_the_model_nothing(qtbot, window, model_files):
    """Opening or training a run builds no lab model while the lab's tabs are hidden; showing one does."""
    _open(qtbot, window, model_files["logreg"])
    assert window.tabs.currentWidget() is window.training_view
    qtbot.wait(200)
    assert window.attack_view.live is None and not window.lab._latest
    window.tabs.setCurrentWidget(window.attack_view)
    qtbot.waitUntil(lambda: window.attack_view.live is not None, timeout=60_000)


# --- the Adversarial tab --------------------------------------------------------------------------------


def test_the_eps_slider_attacks_within_the_budget(qtbot, window, model_files):
    run = _open(qtbot, window, model_files["logreg"])
    attack = window.attack_view
    window.tabs.setCurrentWidget(attack)
    attack.index_spin.setValue(7)
    x = run.dataset.test_images[7].reshape(-1) / 255.0
    fooled_somewhere = False
    for method in ("fgsm", "pgd"):
        attack.method_box.setCurrentIndex(attack.method_box.findData(method))
        assert attack.steps_spin.isVisibleTo(attack) == (method == "pgd")
        for position in (0, 10, 40, 80):
            attack.eps_slider.setValue(position)
            eps = position * 0.5 / 100
            qtbot.waitUntil(lambda: attack.live is not None and attack.live["eps"] == eps
                            and attack.live["method"] == method, timeout=60_000)
            adversarial = attack.live["adversarial"]
            assert np.allclose(attack.live["x"], x)
            assert adversarial.min() >= 0 and adversarial.max() <= 1
            assert np.abs(adversarial.astype(np.float64) - x).max() <= eps + 1e-6
            assert np.array_equal(attack.adversarial_pane.values.reshape(-1), adversarial)
            assert abs(attack.live["probs"].sum() - 1) < 1e-5
            if eps == 0:
                assert np.array_equal(adversarial, attack.live["x"])
            else:
                assert np.abs(adversarial - x).max() > 0.5 * eps  # the budget is used
                perturbation = attack.perturbation_pane.values
                assert np.abs(perturbation).max() <= 1 + 1e-5  # amplified by 1/eps into [-1, 1]
            fooled_somewhere |= int(np.argmax(attack.live["probs"])) != int(run.dataset.test_labels[7])
    assert fooled_somewhere  # logreg does not survive eps 0.4
    qtbot.waitUntil(lambda: attack.saliency.explanation is not None, timeout=60_000)  # the adversarial image's


def test_the_accuracy_curve_fooled_gallery_and_export(qtbot, window, model_files, tmp_path):
    _open(qtbot, window, model_files["logreg"])
    attack = window.attack_view
    window.tabs.setCurrentWidget(attack)
    attack.eps_edit.setText("0, 0.05, 0.1, 0.25")
    # PGD's 20 steps an image: work enough (most of a second) for the event loop's gaps to mean something.
    # FGSM on 1,000 images takes under 100 ms since the classifier head is one Op.
    attack.method_box.setCurrentIndex(attack.method_box.findData("pgd"))
    attack.images_spin.setValue(1000)
    qtbot.waitUntil(lambda: attack.live is not None and attack.saliency.explanation is not None, timeout=60_000)
    qtbot.wait(100)  # the live view is drawn: what follows is the curve's alone
    with GapMeter() as meter:  # noqa: F821 (defined by exec above)
        with qtbot.waitSignal(attack.curve_finished, timeout=120_000) as blocker:
            assert attack.compute_curve()
            assert attack.worker.isRunning()  # the curve runs in its worker's thread
            assert not attack.compute_button.isEnabled() and attack.cancel_button.isEnabled()
    report = blocker.args[0]
    print(f"accuracy-vs-eps curve: worst event-loop gap {meter.worst * 1000:.0f} ms over {meter.ticks} ticks")
    assert meter.ticks > 10 and meter.worst <= MAX_GAP
    accuracy = [r.accuracy for r in report.results]
    assert [r.eps for r in report.results] == [0, 0.05, 0.1, 0.25] and not report.cancelled
    assert accuracy[0] > 0.8 and accuracy[0] == pytest.approx(report.results[0].clean_accuracy)
    assert all(b <= a + 0.01 for a, b in zip(accuracy, accuracy[1:]))  # decreasing
    assert accuracy[-1] < 0.10  # PGD (as FGSM) at eps 0.25 takes logistic regression below 10%
    qtbot.waitUntil(lambda: attack.worker is None, timeout=10_000)
    assert attack.compute_button.isEnabled() and "at eps 0.25" in attack.curve_status.text()
    (item,) = attack.curve_items.values()
    xs, ys = item.getData()
    assert np.allclose(ys, np.array(accuracy) * 100)

    # The gallery: fooled examples of the smallest eps that fooled any, each right before and wrong after.
    assert attack.fooled_list.count() > 0
    shown = report.results[attack.fooled_eps_box.currentData()]
    assert shown.eps == 0.05 and attack.fooled_list.count() == len(shown.fooled.indices)
    assert np.all(shown.fooled.predictions != shown.fooled.labels)
    detail = attack.open_fooled(0)
    assert "eps 0.05" in detail.windowTitle()
    qtbot.waitUntil(lambda: detail.saliency.explanation is not None, timeout=60_000)
    assert detail.saliency.explanation.predicted == shown.fooled.predictions[0]
    detail.close()

    # Another run's curve is overlaid, the selected run's drawn thicker.
    _open(qtbot, window, model_files["mlp"])
    with qtbot.waitSignal(attack.curve_finished, timeout=120_000):
        assert attack.compute_curve()
    assert len(attack.curve_items) == 2
    widths = {key[0]: item.opts["pen"].widthF() for key, item in attack.curve_items.items()}
    assert widths[window.current.key] > max(w for k, w in widths.items() if k != window.current.key)

    csv_path, png_path = tmp_path / "curves.csv", tmp_path / "curves.png"
    assert attack.export_csv(str(csv_path)) and attack.export_png(str(png_path))
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["model"] for r in rows} == {"logreg", "dropout_mlp"}
    logreg_rows = [r for r in rows if r["model"] == "logreg"]
    assert [float(r["accuracy"]) for r in logreg_rows] == pytest.approx(accuracy, abs=1e-6)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not attack.export_csv(str(tmp_path / "no-such-folder" / "x.csv"))  # a message, not a crash
    assert window.findChild(QtWidgets.QMessageBox) is not None


def test_the_curve_can_be_cancelled_and_bad_budgets_are_named(qtbot, window, model_files):
    _open(qtbot, window, model_files["logreg"])
    attack = window.attack_view
    attack.eps_edit.setText("0.1, abc")
    assert attack.compute_curve() is False and "'abc' is not a number" in attack.curve_status.text()
    attack.eps_edit.setText("0.1, 2")
    assert attack.compute_curve() is False and "outside [0, 1]" in attack.curve_status.text()
    attack.method_box.setCurrentIndex(attack.method_box.findData("pgd"))
    attack.eps_edit.setText("0.05 0.1 0.15 0.2 0.25 0.3")
    attack.images_spin.setValue(2000)
    progress = []
    with qtbot.waitSignal(attack.curve_finished, timeout=120_000) as blocker:
        assert attack.compute_curve()
        attack.worker.progress.connect(lambda done, total: (progress.append(done), attack.cancel_curve()))
    report = blocker.args[0]
    assert report.cancelled and len(report.results) < 6
    assert progress and "cancelled" in attack.curve_status.text()
    qtbot.waitUntil(lambda: attack.worker is None, timeout=10_000)
    assert attack.compute_button.isEnabled() and not attack.cancel_button.isEnabled()


# --- saliency in the digit detail ------------------------------------------------------------------------


def test_saliency_in_the_digit_detail(qtbot, window, model_files):
    run = _open(qtbot, window, model_files["mlp"])
    window.show_detail(0)
    detail = window.detail
    panel = detail.saliency
    assert panel is not None and panel.isVisibleTo(detail)
    qtbot.waitUntil(lambda: panel.explanation is not None, timeout=60_000)
    label = int(run.dataset.test_labels[0])
    assert panel.explanation.predicted == int(np.argmax(run.test_probs[0]))
    gradient = panel.heat_map()
    assert gradient.shape == (28, 28) and np.count_nonzero(gradient) > 100
    assert np.array_equal(panel.pane.values, gradient)
    panel.method_box.setCurrentIndex(panel.method_box.findData("integrated"))
    integrated = panel.heat_map()
    image = run.dataset.test_images[0].reshape(28, 28)
    assert np.all(integrated[image == 0] == 0)  # black pixels match the black baseline: no credit
    assert not np.allclose(integrated, gradient)
    other = (label + 1) % 10
    panel.class_box.setCurrentIndex(panel.class_box.findData(other))
    qtbot.waitUntil(lambda: panel.explanation is not None and panel.explanation.target == other, timeout=60_000)
    assert f"class {other}" in panel.pane.caption.text()


def test_closing_while_the_curve_is_computed(qtbot, window, model_files):
    from mnistgui.gui.worker import running_threads

    _open(qtbot, window, model_files["logreg"])
    attack = window.attack_view
    attack.method_box.setCurrentIndex(attack.method_box.findData("pgd"))
    attack.eps_edit.setText("0.05 0.1 0.15 0.2 0.25 0.3")
    attack.images_spin.setValue(2000)
    with qtbot.waitSignal(attack.curve_finished, timeout=120_000) as blocker:
        assert attack.compute_curve()
        with qtbot.waitSignal(attack.worker.progress, timeout=60_000):
            pass
        window.close()  # never waits: the curve is cancelled and the window closes when its thread is done
        assert not window.isVisible()
    assert blocker.args[0].cancelled
    qtbot.waitUntil(lambda: running_threads() == 0, timeout=30_000)


def test_nearest_neighbours_draws_but_has_no_gradient(qtbot, window, tmp_path):
    path = _trained_file(tmp_path, "knn", train_size=5000, test_size=500)
    _open(qtbot, window, path)
    view = window.draw_view
    window.tabs.setCurrentWidget(view)
    _stroke(view.pad, _line((140, 40), (140, 240)))
    qtbot.waitUntil(lambda: view.probs is not None, timeout=60_000)
    assert abs(view.probs.sum() - 1) < 1e-6
    qtbot.waitUntil(lambda: "no saliency map" in view.saliency.pane.caption.text(), timeout=60_000)
    attack = window.attack_view
    window.tabs.setCurrentWidget(attack)
    assert not attack.compute_button.isEnabled()
    qtbot.waitUntil(lambda: "no gradient" in attack.live_status.text(), timeout=60_000)


def test_a_pen_s_pressure_sets_the_stroke_width(qtbot):
    from mnistgui.gui.lab_draw import DrawingPad

    widths = {}
    for pressure in (0.1, 1.0):
        pad = DrawingPad()
        qtbot.addWidget(pad)
        pad.show()
        changes = []
        pad.changed.connect(lambda: changes.append(1))
        for kind, y in ((QtCore.QEvent.TabletPress, 40), *((QtCore.QEvent.TabletMove, y) for y in range(50, 241, 10)),
                        (QtCore.QEvent.TabletRelease, 240)):
            event = QtGui.QTabletEvent(kind, QtCore.QPointF(140, y), QtCore.QPointF(140, y), QtGui.QTabletEvent.Stylus,
                                       QtGui.QTabletEvent.Pen, pressure, 0, 0, 0.0, 0.0, 0, QtCore.Qt.NoModifier, 1,
                                       QtCore.Qt.LeftButton, QtCore.Qt.LeftButton)
            QtWidgets.QApplication.sendEvent(pad, event)
        assert len(pad.strokes) == 1 and len(changes) == 21
        row = pad.ink()[140]
        widths[pressure] = np.count_nonzero(row > 0.5)
    assert widths[1.0] >= 2 * widths[0.1] > 0  # a light touch draws a thin line


def test_only_the_latest_request_of_a_channel_is_answered(qtbot, window, model_files):
    _open(qtbot, window, model_files["logreg"])
    service = window.lab
    computed, answered = [], []

    def slow(value):
        def function(lab):
            time.sleep(0.02)  # a model call that takes a while
            computed.append(value)
            return value
        return function

    for value in range(50):  # a slider dragged across fifty positions faster than the model answers
        service.request("test", slow(value), answered.append)
    qtbot.waitUntil(lambda: answered == [49], timeout=60_000)
    qtbot.wait(100)
    assert answered == [49] and computed[-1] == 49
    assert len(computed) < 10  # superseded requests were dropped before they ran
