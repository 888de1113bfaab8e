import pytest

pytest.importorskip("pytestqt")


def test_main_window_opens(qtbot):
    from mnistgui.gui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    assert window.windowTitle().startswith("mnistgui")
