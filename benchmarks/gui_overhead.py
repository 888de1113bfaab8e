"""How much slower is training in the window than headless? Prints the figures.

Trains the same configuration headless (the core's Trainer) and in the MainWindow (offscreen, the
real worker thread, signals and per-epoch viewer updates), alternating, and compares the epochs'
training seconds. Run on an idle machine:

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_overhead.py [--model dropout_mlp] [--repeats 3]
"""

import argparse
import statistics
import time

from PyQt5 import QtCore

from mnistgui.core.config import Config
from mnistgui.core.data import load_dataset
from mnistgui.core.training import EpochResult, Trainer, create_model
from mnistgui.gui.app import make_application
from mnistgui.gui.main_window import MainWindow


def headless(config, dataset):
    trainer = Trainer(create_model(config), dataset.subset(config.train_size, config.test_size))
    return [r.seconds for r in trainer.train() if isinstance(r, EpochResult)]


def windowed(app, window, config):
    window.config_panel.set_config(config)
    window.start_training()
    while window.busy or window.state in ("loading", "compiling", "training"):  # loading: the dataset, in the background
        app.processEvents(QtCore.QEventLoop.AllEvents, 50)
        time.sleep(0.005)
    return [r.seconds for r in window.current.history]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="dropout_mlp")
    parser.add_argument("--train-size", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    app = make_application()
    settings = QtCore.QSettings(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, "mnistgui-bench", "gui")
    window = MainWindow(settings=settings)
    window.ask = lambda title, text: True
    window.show()
    config = Config.for_model(args.model, train_size=args.train_size, epochs=args.epochs)
    dataset = load_dataset(config.dataset)
    headless(config, dataset)  # compile once, so both sides run warm
    plain, gui = [], []
    for _ in range(args.repeats):
        plain += headless(config, dataset)
        gui += windowed(app, window, config)
    window.close()
    a, b = statistics.median(plain), statistics.median(gui)
    print(f"{args.model}, {config.train_size or 60000} images, {len(plain)} epochs each: "
          f"headless median {a:.3f} s, window median {b:.3f} s, window/headless {b / a:.3f}")


if __name__ == "__main__":
    main()
