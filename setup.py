from pathlib import Path

from setuptools import find_packages, setup

about = {}
exec(Path("mnistgui/__init__.py").read_text(), about)

setup(
    name="mnistgui",
    version=about["__version__"],
    description="A desktop deep-learning workbench for MNIST: the 2016 intro notebook's models, in PyTensor and PyQt5",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11,<3.15",  # as PyTensor's
    # The top-level resources/ folder installs as the package mnistgui.resources.
    packages=find_packages(include=["mnistgui", "mnistgui.*"]) + ["mnistgui.resources"],
    package_dir={"mnistgui.resources": "resources"},
    # The C source of core/pixel_products, compiled at first use.
    package_data={"mnistgui.resources": ["*.png"], "mnistgui.core": ["*.c"]},
    install_requires=[
        "numpy>=1.26",
        "pytensor>=3.0,<4",
        "numba>=0.60",
        "h5py>=3.10",
        "PyQt5>=5.15",
        "pyqtgraph>=0.13.7",
        "Pillow>=10",
        "threadpoolctl>=3.1",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-qt>=4.4", "pytest-timeout>=2.3", "hypothesis>=6.100", "scipy>=1.11",
                 "jax[cpu]>=0.10.2,<0.11"],
        # The JAX backend on the CPU; for an NVIDIA GPU instead: pip install -U "jax[cuda12]".
        "jax": ["jax[cpu]>=0.10.2,<0.11"],
        "bench": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["mnistgui = mnistgui.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Environment :: X11 Applications :: Qt",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
