"""The main window: configuration on the left, training, gallery, confusion and filters in tabs."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PyQt5 import QtCore, QtGui, QtWidgets

from .. import __version__
from ..core import data as data_module
from ..core.backend import BACKEND_TITLES, resolve_backend
from ..core.config import MODEL_TITLES, Config
from ..core.data import Dataset
from ..core.errors import ConfigError, MnistguiError
from ..core.modelfile import load_model, save_model
from ..core.training import Evaluation, Model, NeuralModel, Trainer, create_model
from .config_panel import ConfigPanel
from .confusion import ConfusionView
from .data_dialog import DataDialog
from .filters import FilterView
from .gallery import DigitDetail, GalleryView
from .plots import PALETTE, TrainingPlot
from .worker import EvaluationWorker, TrainingWorker

MAX_RECENT = 8


@dataclass
class Run:
    """One training run of this session, or a model opened from a file."""

    key: int
    model: Model
    dataset: Dataset  # the subset it trains and is evaluated on
    color: str
    snapshots: list = field(default_factory=list)  # (epoch, weights) after each epoch
    test_probs: np.ndarray | None = None
    path: str | None = None

    @property
    def config(self) -> Config:
        return self.model.config

    @property
    def history(self):
        return self.model.history

    @property
    def name(self) -> str:
        label = Path(self.path).name if self.path else f"run {self.key}"
        return f"{label}: {MODEL_TITLES[self.config.model]}"


class MainWindow(QtWidgets.QMainWindow):
    state_changed = QtCore.pyqtSignal(str)
    predictions_ready = QtCore.pyqtSignal(object)  # the Run whose test predictions just arrived

    def __init__(self, settings: QtCore.QSettings | None = None, data_dir: str | None = None):
        super().__init__()
        self.settings = settings or QtCore.QSettings()
        self.runs: list[Run] = []
        self.current: Run | None = None
        self.worker: TrainingWorker | None = None
        self.evaluator: EvaluationWorker | None = None
        self.datasets: dict[str, Dataset] = {}
        self.data_dir = data_dir or self.settings.value("data_dir", None) or None
        self.state = "idle"
        self.detail: DigitDetail | None = None
        self.message_box: QtWidgets.QMessageBox | None = None
        self._compile_started = QtCore.QElapsedTimer()
        self._compile_timer = QtCore.QTimer(self, interval=200, timeout=self._show_compile_time)
        self.setWindowTitle(f"mnistgui {__version__}")
        self.resize(1280, 820)
        self._build_widgets()
        self._build_actions()
        self._restore_settings()
        self._set_state("idle")

    # --- construction ------------------------------------------------------------------------------

    def _build_widgets(self):
        self.config_panel = ConfigPanel()
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

        self.runs_list = QtWidgets.QListWidget()
        self.runs_list.setToolTip("Tick to show a run's curves; select to inspect it")
        self.runs_list.itemChanged.connect(self._run_item_changed)
        self.runs_list.currentRowChanged.connect(self._run_selected)
        runs_dock = QtWidgets.QDockWidget("Runs", self)
        runs_dock.setObjectName("runs")
        runs_dock.setWidget(self.runs_list)
        self.addDockWidget(QtCore.Qt.LeftDockWidgetArea, runs_dock)
        self.resizeDocks([dock, runs_dock], [620, 140], QtCore.Qt.Vertical)

        self.tabs = QtWidgets.QTabWidget()
        training = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(training)
        row = QtWidgets.QHBoxLayout()
        self.log_scale = QtWidgets.QCheckBox("Log scale")
        self.log_scale.toggled.connect(lambda on: self.plot.set_log_scale(on))
        row.addWidget(self.log_scale)
        row.addStretch(1)
        layout.addLayout(row)
        self.plot = TrainingPlot()
        splitter = QtWidgets.QSplitter(QtCore.Qt.Vertical)
        splitter.addWidget(self.plot)
        self.epoch_table = QtWidgets.QTableWidget(0, 6)
        self.epoch_table.setHorizontalHeaderLabels(["epoch", "train error", "test error", "cost", "seconds", "images/s"])
        self.epoch_table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.Stretch)
        self.epoch_table.verticalHeader().hide()
        self.epoch_table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        splitter.addWidget(self.epoch_table)
        splitter.setSizes([520, 160])
        layout.addWidget(splitter, 1)
        self.tabs.addTab(training, "Training")
        self.gallery = GalleryView()
        self.gallery.image_activated.connect(self.show_detail)
        self.tabs.addTab(self.gallery, "Gallery")
        self.confusion = ConfusionView()
        self.confusion.cell_clicked.connect(self.show_confusion_cell)
        self.tabs.addTab(self.confusion, "Confusion matrix")
        self.filters = FilterView()
        self.tabs.addTab(self.filters, "Filters and feature maps")
        self.setCentralWidget(self.tabs)

        status = self.statusBar()
        self.state_label = QtWidgets.QLabel()
        self.state_label.setMinimumWidth(260)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(260)
        self.progress.setTextVisible(True)
        self.rate_label = QtWidgets.QLabel()
        self.rate_label.setMinimumWidth(360)  # text changes then never resize, so never relayout, the window
        self.backend_label = QtWidgets.QLabel()
        status.addWidget(self.state_label)
        status.addWidget(self.progress)
        status.addWidget(self.rate_label, 1)
        status.addPermanentWidget(self.backend_label)

    def _action(self, text, slot, shortcut=None, tip=None, checkable=False):
        action = QtWidgets.QAction(text, self)
        if shortcut:
            action.setShortcut(QtGui.QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(f"{tip} ({QtGui.QKeySequence(shortcut).toString()})" if shortcut else tip)
        action.setCheckable(checkable)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self):
        self.start_action = self._action("&Start", self.start_training, "F5", "Train a new run with this configuration")
        self.pause_action = self._action("&Pause", self.toggle_pause, "F6", "Pause or resume training")
        self.stop_action = self._action("S&top", self.stop_training, "Esc", "Stop within one batch")
        self.stop_after_action = self._action("Stop after this &epoch", self._stop_after_epoch, None,
                                              "Finish the current epoch, then stop", checkable=True)
        self.continue_action = self._action("&Resume training", self.continue_training, "Shift+F5",
                                            "Train the selected run for more epochs, exactly where it stopped")
        self.open_action = self._action("&Open model…", self.open_dialog, QtGui.QKeySequence.Open, "Open a model file")
        self.save_action = self._action("&Save model", self.save, QtGui.QKeySequence.Save, "Save the selected run")
        self.save_as_action = self._action("Save model &as…", self.save_as, QtGui.QKeySequence.SaveAs)
        self.export_csv_action = self._action("Export histories as &CSV…", self.export_csv)
        self.export_plot_action = self._action("Export plot as PNG or S&VG…", self.export_plot)
        self.data_action = self._action("Choose &data folder…", self.choose_data_folder)
        self.quit_action = self._action("&Quit", self.close, QtGui.QKeySequence.Quit)
        self.about_action = self._action("&About mnistgui", self.about)

        menu = self.menuBar().addMenu("&File")
        menu.addAction(self.open_action)
        self.recent_menu = menu.addMenu("Open &recent")
        menu.addAction(self.save_action)
        menu.addAction(self.save_as_action)
        menu.addSeparator()
        menu.addAction(self.export_csv_action)
        menu.addAction(self.export_plot_action)
        menu.addSeparator()
        menu.addAction(self.data_action)
        menu.addSeparator()
        menu.addAction(self.quit_action)
        menu = self.menuBar().addMenu("&Train")
        for action in (self.start_action, self.pause_action, self.stop_action, self.stop_after_action,
                       self.continue_action):
            menu.addAction(action)
        self.menuBar().addMenu("&Help").addAction(self.about_action)

        toolbar = self.addToolBar("Training")
        toolbar.setObjectName("training-toolbar")
        toolbar.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
        style = self.style()
        for action, icon in ((self.start_action, QtWidgets.QStyle.SP_MediaPlay),
                             (self.pause_action, QtWidgets.QStyle.SP_MediaPause),
                             (self.stop_action, QtWidgets.QStyle.SP_MediaStop),
                             (self.continue_action, QtWidgets.QStyle.SP_MediaSeekForward),
                             (self.open_action, QtWidgets.QStyle.SP_DialogOpenButton),
                             (self.save_action, QtWidgets.QStyle.SP_DialogSaveButton)):
            action.setIcon(style.standardIcon(icon))
            toolbar.addAction(action)
        toolbar.addAction(self.stop_after_action)

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
        if self.data_dir:
            self.settings.setValue("data_dir", str(self.data_dir))
        self.settings.sync()

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent_files") or []
        return [value] if isinstance(value, str) else list(value)

    def _remember(self, path: str):
        files = [str(Path(path).resolve())] + [f for f in self.recent_files() if f != str(Path(path).resolve())]
        self.settings.setValue("recent_files", files[:MAX_RECENT])
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self):
        self.recent_menu.clear()
        files = self.recent_files()
        for path in files:
            self.recent_menu.addAction(path, lambda p=path: self.open_model(p))
        self.recent_menu.setEnabled(bool(files))

    # --- state -------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.isRunning()

    def _set_state(self, state: str, detail: str = ""):
        self.state = state
        titles = {"idle": "Ready", "compiling": "Compiling", "training": "Training", "paused": "Paused",
                  "stopping": "Stopping", "stopped": "Stopped", "finished": "Finished", "failed": "Failed",
                  "loading": "Loading"}
        self.state_label.setText(f"<b>{titles.get(state, state)}</b> {detail}".strip())
        running = state in ("compiling", "training", "paused", "stopping")
        self.start_action.setEnabled(not running and state != "loading")
        self.continue_action.setEnabled(not running and self.current is not None
                                        and self.current.config.is_trainable)
        self.pause_action.setEnabled(state in ("training", "paused"))
        self.pause_action.setText("&Resume" if state == "paused" else "&Pause")
        self.stop_action.setEnabled(state in ("compiling", "training", "paused"))
        self.stop_after_action.setEnabled(state in ("compiling", "training", "paused"))
        self.save_action.setEnabled(not running and self.current is not None)
        self.save_as_action.setEnabled(not running and self.current is not None)
        self.open_action.setEnabled(not running)
        self.config_panel.setEnabled(not running)
        self.state_changed.emit(state)

    def _show_compile_time(self):
        self._set_state("compiling", f"the graph… {self._compile_started.elapsed() / 1000:.0f} s")

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

    def dataset(self, name: str) -> Dataset | None:
        """The dataset, loaded once; None (after offering the ways out) when it is not found."""
        if name in self.datasets:
            return self.datasets[name]
        try:
            dataset = data_module.load_dataset(name, self.data_dir)
        except data_module.DataNotFoundError as exc:
            self.offer_data(name, str(exc))
            return None
        except MnistguiError as exc:
            self.show_message("Data problem", str(exc))
            return None
        self.datasets[name] = dataset
        return dataset

    def offer_data(self, name: str, reason: str):
        dialog = DataDialog(name, reason, self)
        dialog.folder_chosen.connect(self._use_data_folder)
        dialog.dataset_chosen.connect(self._use_other_dataset)
        dialog.open()
        self.data_dialog = dialog

    def _use_data_folder(self, folder: str):
        self.data_dir = folder
        self.datasets.clear()
        self.settings.setValue("data_dir", folder)
        self.statusBar().showMessage(f"data folder: {folder}", 5000)

    def _use_other_dataset(self, name: str):
        config = self.config_panel.config().replace(dataset=name)
        self.config_panel.set_config(config)

    def choose_data_folder(self):
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Folder with the MNIST files", self.data_dir or "")
        if folder:
            self._use_data_folder(folder)

    # --- runs --------------------------------------------------------------------------------------

    def _add_run(self, model: Model, dataset: Dataset, path: str | None = None) -> Run:
        key = len(self.runs) + 1
        run = Run(key, model, dataset, PALETTE[(key - 1) % len(PALETTE)], path=path)
        self.runs.append(run)
        item = QtWidgets.QListWidgetItem(run.name)
        item.setFlags(item.flags() | QtCore.Qt.ItemIsUserCheckable)
        item.setCheckState(QtCore.Qt.Checked)
        item.setForeground(QtGui.QColor(run.color))
        item.setData(QtCore.Qt.UserRole, key)
        self.runs_list.blockSignals(True)
        self.runs_list.addItem(item)
        self.runs_list.setCurrentItem(item)
        self.runs_list.blockSignals(False)
        self.plot.update_run(key, run.name, run.color, run.history)
        self._select(run)
        return run

    def _run_item_changed(self, item):
        self.plot.set_run_visible(item.data(QtCore.Qt.UserRole), item.checkState() == QtCore.Qt.Checked)

    def _run_selected(self, row: int):
        if 0 <= row < len(self.runs) and not self.busy:
            self._select(self.runs[row])

    def _select(self, run: Run):
        self.current = run
        dataset = run.dataset
        self.gallery.set_dataset(dataset.test_images, dataset.test_labels, dataset.class_names)
        self.confusion.set_class_names(dataset.class_names)
        self.filters.set_run(run.config, run.snapshots, dataset.test_images.reshape(len(dataset.test_images), -1))
        self._fill_epoch_table(run)
        self._show_predictions(run)
        backend = getattr(run.model, "backend", "numpy")
        self.backend_label.setText(f"backend: {BACKEND_TITLES.get(backend, backend)}")
        self._set_state(self.state if self.busy else "idle")

    def _fill_epoch_table(self, run: Run):
        self.epoch_table.setRowCount(0)
        for result in run.history:
            self._append_epoch_row(result)

    def _append_epoch_row(self, result):
        row = self.epoch_table.rowCount()
        self.epoch_table.insertRow(row)

        def fmt(value, kind):
            if isinstance(value, float) and math.isnan(value):
                return "–"
            return {"pct": f"{value:.2%}", "f": f"{value:.4f}", "s": f"{value:.2f}", "n": f"{value:,.0f}"}.get(kind, str(value))

        values = [(result.epoch, "i"), (result.train_error, "pct"), (result.test_error, "pct"), (result.cost, "f"),
                  (result.seconds, "s"), (result.images_per_second, "n")]
        for column, (value, kind) in enumerate(values):
            item = QtWidgets.QTableWidgetItem(fmt(value, kind))
            item.setTextAlignment(QtCore.Qt.AlignRight | QtCore.Qt.AlignVCenter)
            self.epoch_table.setItem(row, column, item)
        self.epoch_table.scrollToBottom()

    def _show_predictions(self, run: Run):
        if run.test_probs is None:
            self.gallery.set_probs(None)
            self.confusion.set_matrix(np.zeros((10, 10), dtype=np.int64))
            return
        evaluation = Evaluation(run.test_probs, np.asarray(run.dataset.test_labels, dtype=np.int64))
        self.gallery.set_probs(run.test_probs)
        self.confusion.set_matrix(evaluation.confusion())

    # --- training ----------------------------------------------------------------------------------

    def start_training(self):
        if self.busy:
            return
        try:
            config = self.config_panel.config()
            backend = resolve_backend(config.backend)
        except (ConfigError, ValueError) as exc:
            self.show_message("Configuration", str(exc))
            return
        full = self.dataset(config.dataset)
        if full is None:
            return
        model = create_model(config)
        run = self._add_run(model, full.subset(config.train_size, config.test_size))
        self.backend_label.setText(f"backend: {BACKEND_TITLES.get(backend, 'NumPy') if config.is_trainable else 'NumPy'}")
        self._launch(run, config.epochs)

    def continue_training(self):
        run = self.current
        if self.busy or run is None or not run.config.is_trainable:
            return
        epochs = self.config_panel.widgets["epochs"].value()
        self._launch(run, epochs)

    def _launch(self, run: Run, epochs: int):
        self.stop_after_action.setChecked(False)
        self.progress.setValue(0)
        self.rate_label.clear()
        worker = TrainingWorker(Trainer(run.model, run.dataset), epochs, self)
        self._epochs_target = run.model.epochs_done + epochs
        self._shown_epoch = None
        worker.compiling.connect(self._on_compiling)
        worker.compiled.connect(self._on_compiled)
        worker.batch_progress.connect(self._on_batch)
        worker.epoch_finished.connect(lambda snapshot, r=run: self._on_epoch(r, snapshot))
        worker.finished_run.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.finished.connect(worker.deleteLater)  # else, parented to the window, each run's model lives on
        self.worker = worker
        self._set_state("compiling" if run.config.is_trainable else "training",
                        "" if run.config.is_trainable else "nearest neighbours over the test set")
        worker.start()

    def _on_compiling(self):
        self._compile_started.start()
        self._compile_timer.start()
        self._show_compile_time()

    def _on_compiled(self, seconds: float):
        self._compile_timer.stop()
        self.statusBar().showMessage(f"compiled in {seconds:.1f} s", 4000)
        self._set_state("training", f"epoch {self.current.model.epochs_done + 1} of {self._epochs_target}")

    def _on_batch(self, progress):
        # Touch only the two status widgets: a relayout or a repaint of the plots here holds the GIL
        # the training thread needs, and at 10 updates a second slowed training by 40%.
        self.progress.setValue(int(progress.fraction * 1000))
        eta = "" if math.isnan(progress.eta_seconds) else f"ETA {progress.eta_seconds:.0f} s · "
        cost = "" if math.isnan(progress.cost) else f" · cost {progress.cost:.4f}"
        self.rate_label.setText(f"{eta}{progress.images_per_second:,.0f} images/s{cost}")
        if progress.epoch != self._shown_epoch and self.state == "training" and self.current.config.is_trainable:
            self._shown_epoch = progress.epoch
            self._set_state("training", f"epoch {progress.epoch} of {self._epochs_target}")

    def _on_epoch(self, run: Run, snapshot):
        result = snapshot.result
        run.test_probs = snapshot.test_probs
        if snapshot.weights:
            run.snapshots.append((result.epoch, snapshot.weights))
            if run is self.current:
                self.filters.add_snapshot(result.epoch, snapshot.weights)
        self.plot.update_run(run.key, run.name, run.color, run.history)
        if run is self.current:
            self._append_epoch_row(result)
            self._show_predictions(run)
        self.statusBar().showMessage(
            f"epoch {result.epoch}: test error {result.test_error:.2%}, {result.seconds:.1f} s", 5000)

    def _on_finished(self, how: str):
        self._compile_timer.stop()
        run = self.current
        if how == "stopped":
            detail = f"at the end of epoch {run.model.epochs_done}" if run else ""
        else:
            detail = f"{run.model.epochs_done} epochs" if run and run.config.is_trainable else ""
        self.worker = None
        self._set_state(how, detail)

    def _on_failed(self, message: str):
        self._compile_timer.stop()
        self.worker = None
        run = self.current
        detail = f"the model is kept at epoch {run.model.epochs_done}" if run else ""
        self._set_state("failed", detail)
        self.show_message("Training failed", message, QtWidgets.QMessageBox.Critical)

    def toggle_pause(self):
        if not self.busy:
            return
        if self.worker.control.paused:
            self.worker.resume()
            self._set_state("training", f"epoch {self.current.model.epochs_done + 1} of {self._epochs_target}")
        else:
            self.worker.pause()
            self._set_state("paused", "between batches")

    def stop_training(self):
        if self.busy:
            self.worker.stop()
            self._set_state("stopping", "after this batch")

    def _stop_after_epoch(self, checked: bool):
        if self.busy:
            self.worker.stop_after_epoch(checked)

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
        self.detail = DigitDetail(index, dataset.test_images[index], int(dataset.test_labels[index]), probs,
                                  dataset.class_names, self)
        self.detail.show_features.connect(self.show_feature_maps)
        self.detail.show()

    def show_feature_maps(self, index: int):
        self.filters.show_image(index)
        self.tabs.setCurrentWidget(self.filters)

    # --- files -------------------------------------------------------------------------------------

    def open_dialog(self):
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open model", "", "mnistgui models (*.h5 *.hdf5);;All files (*)")
        if path:
            self.open_model(path)

    def open_model(self, path: str) -> Run | None:
        if self.busy:
            return None
        try:
            model, header = load_model(path)
        except MnistguiError as exc:
            self.show_message("Cannot open model", str(exc))
            return None
        full = self.dataset(model.config.dataset)
        if full is None:
            return None
        run = self._add_run(model, full.subset(model.config.train_size, model.config.test_size), path=path)
        if isinstance(model, NeuralModel):
            run.snapshots.append((model.epochs_done, model.weights()))
            self.filters.set_run(run.config, run.snapshots, run.dataset.test_images.reshape(len(run.dataset.test_images), -1))
        self.config_panel.set_config(model.config)
        self._remember(path)
        self._set_state("loading", f"predicting {len(run.dataset.test_labels):,} test images")
        self.evaluator = EvaluationWorker(model, run.dataset.test_images, self)
        self.evaluator.done.connect(lambda probs, r=run: self._on_evaluated(r, probs))
        self.evaluator.failed.connect(lambda message: (self._set_state("failed"), self.show_message("Cannot evaluate", message)))
        self.evaluator.finished.connect(self.evaluator.deleteLater)
        self.evaluator.start()
        return run

    def _on_evaluated(self, run: Run, probs):
        run.test_probs = probs
        if run is self.current:
            self._show_predictions(run)
        error = Evaluation(probs, np.asarray(run.dataset.test_labels, dtype=np.int64)).error
        self._set_state("idle", f"{Path(run.path).name}: {run.model.epochs_done} epochs, test error {error:.2%}")
        self.predictions_ready.emit(run)

    def save(self):
        run = self.current
        if run is None or self.busy:
            return
        if run.path:
            self._save_to(run, run.path)
        else:
            self.save_as()

    def save_as(self):
        run = self.current
        if run is None or self.busy:
            return
        suggestion = run.path or f"{run.config.model}-{run.model.epochs_done}ep.h5"
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save model", suggestion, "mnistgui models (*.h5)")
        if path:
            self._save_to(run, path if path.endswith((".h5", ".hdf5")) else path + ".h5")

    def _save_to(self, run: Run, path: str) -> bool:
        dataset = self.datasets.get(run.config.dataset)
        try:
            save_model(run.model, path, run.config.dataset, dataset.digest if dataset else "")
        except MnistguiError as exc:
            self.show_message("Not saved", f"{exc}\n\nThe model is still here: save it somewhere else.")
            return False
        run.path = path
        item = self.runs_list.item(self.runs.index(run))
        item.setText(run.name)
        self._remember(path)
        self.statusBar().showMessage(f"saved {path}", 5000)
        return True

    def export_csv(self, path: str | None = None):
        if not path:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export histories", "histories.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            with open(path, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["run", "model", "epoch", "train_error", "test_error", "cost", "seconds"])
                for run in self.runs:
                    for r in run.history:
                        writer.writerow([run.key, run.config.model, r.epoch, r.train_error, r.test_error, r.cost, r.seconds])
        except OSError as exc:
            self.show_message("Not exported", f"cannot write {path}: {exc.strerror or exc}")

    def export_plot(self, path: str | None = None):
        if not path:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export plot", "training.png", "PNG (*.png);;SVG (*.svg)")
        if path:
            try:
                self.plot.export(path)
            except Exception as exc:  # exporters raise a variety of errors on unwritable paths
                self.show_message("Not exported", f"cannot write {path}: {exc}")

    def about(self):
        import h5py
        import pyqtgraph
        import pytensor
        from PyQt5.QtCore import PYQT_VERSION_STR, QT_VERSION_STR

        backend = resolve_backend("auto")
        text = (f"<h3>mnistgui {__version__}</h3>"
                "<p>A desktop workbench for the models of the 2016 notebook “Introduction to Deep Learning” "
                "(after Alec Radford's Theano-Tutorials), compiled with PyTensor, Theano's successor.</p>"
                f"<p>PyTensor {pytensor.__version__} · NumPy {np.__version__} · h5py {h5py.__version__}<br>"
                f"PyQt {PYQT_VERSION_STR} · Qt {QT_VERSION_STR} · pyqtgraph {pyqtgraph.__version__}<br>"
                f"Default backend here: {BACKEND_TITLES[backend]}</p>")
        QtWidgets.QMessageBox.about(self, "About mnistgui", text)

    # --- closing -----------------------------------------------------------------------------------

    def closeEvent(self, event):
        if self.busy:
            if not self.ask("Quit mnistgui", "Training is running. Stop it and quit?"):
                event.ignore()
                return
            self.worker.stop()
            self.worker.resume()
            self.worker.wait()
        if self.evaluator is not None:
            try:
                self.evaluator.wait()
            except RuntimeError:  # already deleted: it had finished
                pass
        self._save_settings()
        event.accept()
