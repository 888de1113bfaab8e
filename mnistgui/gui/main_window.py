"""The main window: configuration on the left, training, gallery, confusion and filters in tabs.

The runs, datasets and files live in a Qt-free `Workspace`; the views follow its events. Whatever
may take more than a moment (loading a dataset, opening or saving a model file, building and
compiling a model, making the feature-map function) runs in a background thread, and closing
while one runs hides the window at once and finishes closing when the threads are done.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PyQt5 import QtCore, QtWidgets

from .. import __version__
from ..core import data as data_module
from ..core.backend import BACKEND_TITLES, resolve_backend
from ..core.config import Config
from ..core.errors import ConfigError, MnistguiError
from ..core.presets import preset
from ..core.workspace import EpochAdded, PredictionsReady, Run, Workspace
from .background_compile import BackgroundCompiler
from .collector import gui_collector
from .config_panel import ConfigPanel
from .confusion import ConfusionView
from .data_dialog import DataDialog
from .filters import FilterView
from .gallery import DigitDetail, GalleryView
from .lab_attack import AttackView
from .lab_common import ModelService, SaliencyPanel
from .lab_draw import DrawView
from .runs_panel import RunsPanel
from .training_controller import RUNNING, TrainingController
from .training_view import TrainingView
from .window_actions import about_text, install_actions
from .worker import Task, TrainingWorker, describe, start_detached

MAX_RECENT = 8
STATE_TITLES = {"idle": "Ready", "compiling": "Compiling", "training": "Training", "paused": "Paused",
                "stopping": "Stopping", "stopped": "Stopped", "finished": "Finished", "failed": "Failed",
                "loading": "Loading", "saving": "Saving"}


class MainWindow(QtWidgets.QMainWindow):
    state_changed = QtCore.pyqtSignal(str)
    predictions_ready = QtCore.pyqtSignal(object)  # the Run of an opened file, once its predictions are in
    saved = QtCore.pyqtSignal(str)  # the path a run was saved to

    def __init__(self, settings: QtCore.QSettings | None = None, data_dir: str | None = None):
        super().__init__()
        # No automatic collection from here on, not even while the widgets are built: it would run in
        # whichever thread allocates. The release is called on the final close, or when the window is
        # destroyed without one (a closure that does not keep the window alive).
        self._release_collector = release = gui_collector().acquire()
        self.destroyed.connect(release)
        try:
            self._build(settings, data_dir)
        except BaseException:
            release()
            raise

    def _build(self, settings, data_dir):
        self.settings = settings or QtCore.QSettings()
        self.workspace = Workspace(data_dir=data_dir, preferred_data_dir=self.settings.value("data_dir", None) or None)
        self.current: Run | None = None
        self.training = TrainingController(self.workspace, self)
        self.training.state_changed.connect(self._set_state)
        self.training.status_message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        self.training.failed.connect(
            lambda message: self.show_message("Training failed", message, QtWidgets.QMessageBox.Critical))
        self.tasks: set[QtCore.QThread] = set()
        self.state, self.state_detail = "idle", ""
        self.detail: DigitDetail | None = None
        self.message_box: QtWidgets.QMessageBox | None = None
        self.data_dialog: DataDialog | None = None
        self._closing = False
        self.setWindowTitle(f"mnistgui {__version__}")
        self.resize(1280, 820)
        self._build_widgets()
        install_actions(self)
        self._restore_settings()
        self._shown_dataset = self._panel_dataset()  # the first load waits for Start or app start-up
        self.workspace.subscribe(self._on_event)
        self._set_state("idle")
        self.background_compiler = BackgroundCompiler(self)
        gui_collector().freeze_session()

    # --- construction ------------------------------------------------------------------------------

    def _build_widgets(self):
        self.config_panel = ConfigPanel()
        self.config_panel.changed.connect(self._preload_dataset)
        self.config_panel.changed.connect(lambda: self._set_state(self.state, self.state_detail))
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(self.config_panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(340)
        dock = QtWidgets.QDockWidget("Configuration", self)
        dock.setObjectName("configuration")
        dock.setWidget(scroll)
        dock.setFeatures(QtWidgets.QDockWidget.DockWidgetMovable | QtWidgets.QDockWidget.DockWidgetFloatable)
        self.addDockWidget(QtCore.Qt.LeftDockWidgetArea, dock)

        self.runs_list = RunsPanel(self.workspace)
        self.runs_list.run_chosen.connect(self._run_chosen)
        runs_dock = QtWidgets.QDockWidget("Runs", self)
        runs_dock.setObjectName("runs")
        runs_dock.setWidget(self.runs_list)
        self.addDockWidget(QtCore.Qt.LeftDockWidgetArea, runs_dock)
        self.resizeDocks([dock, runs_dock], [620, 140], QtCore.Qt.Vertical)

        self.tabs = QtWidgets.QTabWidget()
        self.training_view = TrainingView(self.workspace)
        self.plot, self.epoch_table = self.training_view.plot, self.training_view.epoch_table
        self.runs_list.visibility_changed.connect(self.plot.set_run_visible)
        self.tabs.addTab(self.training_view, "Training")
        self.gallery = GalleryView()
        self.gallery.image_activated.connect(self.show_detail)
        self.tabs.addTab(self.gallery, "Gallery")
        self.confusion = ConfusionView()
        self.confusion.cell_clicked.connect(self.show_confusion_cell)
        self.tabs.addTab(self.confusion, "Confusion matrix")
        self.filters = FilterView()
        self.filters.mode_box.currentIndexChanged.connect(self._request_layer_function)
        self.tabs.addTab(self.filters, "Filters and feature maps")
        # The selected run's model for the lab's views, in a thread of its own (which never touches the
        # service object itself: it may go with the window while the thread finishes a request).
        self.lab = ModelService(self)
        self.draw_view = DrawView(self.lab)
        self.draw_view.show_features.connect(self.show_drawn_feature_maps)
        self.tabs.addTab(self.draw_view, "Draw")
        self.attack_view = AttackView(self.lab)
        self.attack_view.launch = self._track  # closing waits for its curve's thread
        self.draw_view.attack_digit.connect(self.attack_drawn_digit)
        self.tabs.addTab(self.attack_view, "Adversarial")
        self.setCentralWidget(self.tabs)

        status = self.statusBar()
        self.state_label = QtWidgets.QLabel()
        self.state_label.setMinimumWidth(260)
        self.backend_label = QtWidgets.QLabel()
        status.addWidget(self.state_label)
        status.addWidget(self.training.progress)
        status.addWidget(self.training.rate_label, 1)
        status.addPermanentWidget(self.backend_label)

    # --- settings ----------------------------------------------------------------------------------

    def _restore_settings(self):
        geometry = self.settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self.settings.value("window_state")
        if state is not None:
            self.restoreState(state)
        text = self.settings.value("config")
        if text:
            try:
                self.config_panel.set_config(Config.from_json(text))
            except ConfigError:
                pass  # a configuration from another version: keep the defaults
        self._rebuild_recent_menu()

    def _save_settings(self):
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("window_state", self.saveState())
        try:
            self.settings.setValue("config", self.config_panel.config().to_json())
        except (ConfigError, ValueError):
            pass
        if self.workspace.preferred_data_dir:
            self.settings.setValue("data_dir", str(self.workspace.preferred_data_dir))
        self.settings.sync()

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent_files") or []
        return [value] if isinstance(value, str) else list(value)

    def _remember(self, path: str):
        resolved = str(Path(path).resolve())
        files = [resolved] + [f for f in self.recent_files() if f != resolved]
        self.settings.setValue("recent_files", files[:MAX_RECENT])
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self):
        self.recent_menu.clear()
        files = self.recent_files()
        for path in files:
            self.recent_menu.addAction(path, lambda p=path: self.open_model(p))
        self.recent_menu.setEnabled(bool(files))

    # --- state and background work ------------------------------------------------------------------

    @property
    def runs(self) -> list[Run]:
        return self.workspace.runs

    @property
    def busy(self) -> bool:
        return self.training.busy

    @property
    def worker(self) -> TrainingWorker | None:
        return self.training.worker

    @property
    def data_dir(self) -> str | None:
        return self.workspace.data_dir

    @data_dir.setter
    def data_dir(self, folder: str | None):
        self.workspace.set_data_folders(folder, self.workspace.preferred_data_dir)

    def _set_state(self, state: str, detail: str = ""):
        self.state, self.state_detail = state, detail
        self.state_label.setText(f"<b>{STATE_TITLES.get(state, state)}</b> {detail}".strip())
        running = state in RUNNING
        waiting = state in ("loading", "saving")
        have_run = self.current is not None and not waiting
        self.start_action.setEnabled(not running and not waiting and self.config_panel.is_valid())
        self.continue_action.setEnabled(not running and have_run and self.current.config.is_trainable)
        self.pause_action.setEnabled(state in ("training", "paused"))
        self.pause_action.setText("&Resume" if state == "paused" else "&Pause")
        self.stop_action.setEnabled(state in ("compiling", "training", "paused"))
        self.stop_after_action.setEnabled(state in ("compiling", "training", "paused"))
        self.save_action.setEnabled(not running and have_run)
        self.save_as_action.setEnabled(not running and have_run)
        self.open_action.setEnabled(not running and not waiting)
        self.config_panel.setEnabled(not running and not waiting)
        self.state_changed.emit(state)

    def _in_background(self, function, done, failed=None) -> Task:
        """Run `function()` in a thread; `done(result)` or `failed(exception)` in this one."""
        task = Task(function)
        task.done.connect(done)
        task.failed.connect(failed or (lambda exc: self.show_message("Error", describe(exc))))
        self._track(task)
        return task

    def _track(self, thread: QtCore.QThread) -> None:
        self.tasks.add(thread)
        thread.finished.connect(gui_collector().hold_full_passes())  # released even if the window goes first
        thread.finished.connect(self._thread_finished)  # a method: disconnected if the window goes first
        start_detached(thread)

    def _thread_finished(self) -> None:
        self.tasks.discard(self.sender())
        # What the thread built (a model's graphs, a data set's copies) is garbage now: collected on the
        # GUI thread, its pages handed back to the OS, in a timer event of its own.
        gui_collector().collect_soon()
        if self._closing and not any(t.isRunning() for t in self.tasks):
            QtCore.QTimer.singleShot(0, self.close)

    def show_message(self, title: str, text: str, icon=QtWidgets.QMessageBox.Warning):
        """A non-blocking message box: the event loop, and training, go on while it is open."""
        box = QtWidgets.QMessageBox(icon, title, text, QtWidgets.QMessageBox.Ok, self)
        box.setAttribute(QtCore.Qt.WA_DeleteOnClose)
        box.open()
        self.message_box = box
        return box

    def ask(self, title: str, text: str) -> bool:
        """A yes/no question whose default answer, taken by Enter, is yes."""
        answer = QtWidgets.QMessageBox.question(self, title, text, QtWidgets.QMessageBox.Yes | QtWidgets.QMessageBox.No,
                                                QtWidgets.QMessageBox.Yes)
        return answer == QtWidgets.QMessageBox.Yes

    # --- data --------------------------------------------------------------------------------------

    def dataset(self, name: str, then=None) -> None:
        """Load `name` in the background if needed, then call `then(dataset)`; offer the ways out if not found."""
        cached = self.workspace.cached_dataset(name)
        if cached is not None:
            if then:
                then(cached)
            return
        self._in_background(lambda: self.workspace.dataset(name), then or (lambda dataset: None),
                            lambda exc: self._data_failed(name, exc))

    def _panel_dataset(self) -> str | None:
        try:
            return self.config_panel.config().dataset
        except (ConfigError, ValueError):
            return None

    def _preload_dataset(self):
        """Switching the dataset loads it now, in the background, so that Start finds it ready."""
        name = self._panel_dataset()
        if name is None or name == self._shown_dataset:
            return
        self._shown_dataset = name
        if self.workspace.cached_dataset(name) is None:
            self._in_background(lambda: self.workspace.dataset(name), lambda dataset: None, lambda exc: None)

    def _data_failed(self, name: str, exc: Exception):
        if self.state == "loading":
            self._set_state("idle")
        if isinstance(exc, data_module.DataNotFoundError):
            self.offer_data(name, str(exc))
        else:
            self.show_message("Data problem", describe(exc))

    def offer_data(self, name: str, reason: str):
        if self.data_dialog is not None and self.data_dialog.isVisible():
            return
        dialog = DataDialog(name, reason, self)
        dialog.folder_chosen.connect(self._use_data_folder)
        dialog.dataset_chosen.connect(self._use_other_dataset)
        dialog.open()
        self.data_dialog = dialog

    def _use_data_folder(self, folder: str):
        """A folder the user chose: preferred from now on (and remembered), not the only place searched."""
        self.workspace.set_data_folders(None, folder)
        self.settings.setValue("data_dir", folder)
        self.statusBar().showMessage(f"data folder: {folder}", 5000)

    def _use_other_dataset(self, name: str):
        self.config_panel.set_config(self.config_panel.config().replace(dataset=name))

    def choose_data_folder(self):
        start = self.workspace.preferred_data_dir or self.workspace.data_dir or ""
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Folder with the MNIST files", start)
        if folder:
            self._use_data_folder(folder)

    # --- runs and views -----------------------------------------------------------------------------

    def _on_event(self, event):
        run = event.run
        if isinstance(event, EpochAdded) and run is self.current:
            self.lab.set_run(run)
            if run.config.is_trainable:
                self.filters.snapshot_added()
        elif isinstance(event, PredictionsReady) and run is self.current:
            self._show_predictions(run)

    def _run_chosen(self, run: Run):
        """The user selected a run: show it, with its settings in the panel for Resume training."""
        if self.state in RUNNING or self.state == "saving":
            return
        self._select(run)
        self.config_panel.set_config(run.config)

    def _request_layer_function(self, *args):
        """Compile the feature-map function, in the background, once the viewer shows feature maps:
        a compilation competes with training for the interpreter, so none is made before it is needed."""
        run = self.current
        if (run is None or not run.config.is_trainable or self.filters.layer_outputs is not None
                or self.filters.mode_box.currentData() != "features"):
            return
        config = run.config
        self._in_background(lambda: self.workspace.layer_function(config),
                            lambda function: self.current is not None and self.current.config == config
                            and self.filters.set_layer_function(function))

    def _select(self, run: Run):
        self.current = run
        dataset = run.dataset
        self.gallery.set_dataset(dataset.test_images, dataset.test_labels, dataset.class_names)
        self.confusion.set_class_names(dataset.class_names)
        self.filters.set_run(run.config, run.snapshots, dataset.test_images.reshape(len(dataset.test_images), -1),
                             self.workspace.cached_layer_function(run.config))
        self._request_layer_function()
        self.training_view.show_run(run)
        self._show_predictions(run)
        self.lab.set_run(run)
        self.backend_label.setText(f"backend: {BACKEND_TITLES.get(run.backend, run.backend)}")
        self._set_state(self.state if self.state in RUNNING + ("loading", "saving") else "idle")

    def _show_predictions(self, run: Run):
        evaluation = run.evaluation()
        self.gallery.set_probs(None if evaluation is None else evaluation.probs)
        self.confusion.set_matrix(np.zeros((10, 10), dtype=np.int64) if evaluation is None else evaluation.confusion())

    # --- training ----------------------------------------------------------------------------------

    def start_training(self):
        if self.busy or self.state in ("loading", "saving"):
            return
        try:
            config = self.config_panel.config()
            config.validate()
            resolve_backend(config.backend)
        except (ConfigError, ValueError) as exc:
            self.show_message("Configuration", str(exc))
            return
        if self.workspace.cached_dataset(config.dataset) is None:
            self._set_state("loading", f"the {data_module.DATASET_TITLES[config.dataset]} data set…")
        self.dataset(config.dataset, lambda dataset: self._start_run(config))

    def _start_run(self, config: Config):
        if self._closing:
            return
        run = self.workspace.new_run(config)  # the dataset is loaded: instant
        self._select(run)
        self._launch(run, self.workspace.training_job(run))

    def apply_preset(self, name: str):
        """Fill the configuration panel with a preset, keeping the data set; the user may then edit it."""
        dataset = self.config_panel.config().dataset if self.config_panel.is_valid() else "mnist"
        self.config_panel.set_config(preset(name).config(dataset=dataset))
        self.statusBar().showMessage(f"preset {name}: {preset(name).description}", 8000)

    def continue_training(self):
        run = self.current
        if self.busy or run is None or not run.config.is_trainable or self.state in ("loading", "saving"):
            return
        epochs = self.config_panel.widgets["epochs"].value()
        try:
            wanted = self.config_panel.config()
            changes = {name: getattr(wanted, name) for name in Config.__dataclass_fields__
                       if getattr(wanted, name) != getattr(run.config, name) and name != "epochs"}
            job = self.workspace.resume(run, epochs, changes)
        except (ConfigError, ValueError, MnistguiError) as exc:
            self.show_message("Cannot resume", str(exc))
            return
        self._launch(run, job)

    def _launch(self, run: Run, job):
        self.stop_after_action.setChecked(False)
        self.training.launch(run, job, self._track)

    def toggle_pause(self):
        self.training.toggle_pause()

    def stop_training(self):
        self.training.stop()

    def stop_after_epoch(self, checked: bool):
        self.training.stop_after_epoch(checked)

    # --- gallery, confusion, detail -----------------------------------------------------------------

    def show_confusion_cell(self, true_class: int, predicted_class: int):
        self.gallery.set_filter("pair", true_class, predicted_class)
        self.tabs.setCurrentWidget(self.gallery)

    def show_detail(self, index: int):
        run = self.current
        if run is None:
            return
        dataset = run.dataset
        probs = None if run.test_probs is None else run.test_probs[index]
        saliency = SaliencyPanel(self.lab, "detail-saliency", dataset.class_names)
        saliency.set_image(dataset.test_images[index])
        self.detail = DigitDetail(index, dataset.test_images[index], int(dataset.test_labels[index]), probs,
                                  dataset.class_names, self, saliency=saliency)
        self.detail.show_features.connect(self.show_feature_maps)
        self.detail.show()

    def show_feature_maps(self, index: int):
        self.filters.show_image(index)
        self.tabs.setCurrentWidget(self.filters)

    def show_drawn_feature_maps(self, digit):
        self.filters.show_arbitrary_image(digit, "drawn digit")
        self.tabs.setCurrentWidget(self.filters)

    def attack_drawn_digit(self, digit):
        self.attack_view.set_drawn(digit)
        self.tabs.setCurrentWidget(self.attack_view)

    # --- files -------------------------------------------------------------------------------------

    def open_dialog(self):
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open model", "", "mnistgui models (*.h5 *.hdf5);;All files (*)")
        if path:
            self.open_model(path)

    def open_model(self, path: str) -> bool:
        """Open in the background: read, rebuild and predict; `predictions_ready(run)` when done."""
        if self.state in RUNNING + ("loading", "saving"):
            return False
        workspace = self.workspace

        def load():
            run = workspace.load_run(path)
            return run, workspace.predict(run)

        self._set_state("loading", f"{Path(path).name}…")
        self._in_background(load, self._opened, lambda exc: self._open_failed(path, exc))
        return True

    def _opened(self, loaded):
        run, probs = loaded
        self.workspace.add_run(run)
        self.workspace.set_predictions(run, probs)
        self._select(run)
        self.config_panel.set_config(run.config)
        self._remember(run.path)
        error = run.evaluation().error
        self._set_state("idle", f"{Path(run.path).name}: {run.epochs_done} epochs, test error {error:.2%}")
        self.predictions_ready.emit(run)

    def _open_failed(self, path: str, exc: Exception):
        self._set_state("idle")
        if isinstance(exc, data_module.DataNotFoundError):
            self.offer_data(getattr(exc, "dataset_name", "mnist"), str(exc))
        else:
            self.show_message("Cannot open model", describe(exc))

    def save(self):
        run = self.current
        if run is not None and run.path:
            self.save_to(run, run.path)
        else:
            self.save_as()

    def save_as(self):
        run = self.current
        if run is None or self.busy:
            return
        suggestion = run.path or f"{run.config.model}-{run.epochs_done}ep.h5"
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save model", suggestion, "mnistgui models (*.h5)")
        if path:
            self.save_to(run, path if path.endswith((".h5", ".hdf5")) else path + ".h5")

    def save_to(self, run: Run, path: str) -> bool:
        """Save in the background; `saved(path)` when written."""
        if self.state in RUNNING + ("loading", "saving"):
            return False
        workspace = self.workspace
        previous = self.state
        self._set_state("saving", Path(path).name)

        def written(_):
            workspace.set_path(run, path)
            self._remember(path)
            self._set_state(previous)
            self.statusBar().showMessage(f"saved {path}", 5000)
            self.saved.emit(path)

        def failed(exc):
            self._set_state(previous)
            self.show_message("Not saved", f"{describe(exc)}\n\nThe model is still here: save it somewhere else.")

        self._in_background(lambda: workspace.save(run, path), written, failed)
        return True

    def export_csv(self, path: str | None = None):
        if not path:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export histories", "histories.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            self.workspace.export_histories(path)
        except MnistguiError as exc:
            self.show_message("Not exported", str(exc))

    def export_plot(self, path: str | None = None):
        if not path:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export plot", "training.png", "PNG (*.png);;SVG (*.svg)")
        if path:
            try:
                self.plot.export(path)
            except Exception as exc:  # exporters raise a variety of errors on unwritable paths
                self.show_message("Not exported", f"cannot write {path}: {exc}")

    def about(self):
        QtWidgets.QMessageBox.about(self, "About mnistgui", about_text())

    # --- closing -----------------------------------------------------------------------------------

    def closeEvent(self, event):
        """Never waits: with threads still running, hide now and close when the last one finishes."""
        if not self._closing:
            if self.busy and not self.ask("Quit mnistgui", "Training is running. Stop it and quit?"):
                event.ignore()
                return
            self._save_settings()
            self._closing = True
            self.attack_view.cancel_curve()
            if self.data_dialog is not None and self.data_dialog.isVisible():
                self.data_dialog.reject()
            if self.busy:
                self.worker.stop()
                self.worker.resume()
        if any(t.isRunning() for t in self.tasks):
            self.hide()
            event.ignore()
            return
        self.lab.close()
        self.workspace.close()
        self._release_collector()
        event.accept()
