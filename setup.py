"""Package build for one_fast (metadata lives here; tool settings in pyproject.toml)."""

from setuptools import find_packages, setup

setup(
    name="one_fast",
    version="0.1.0",
    description="Fast training engine for ONE: Knowledge Distillation by On-the-Fly Native Ensemble",
    python_requires=">=3.10",
    packages=find_packages(include=["one_fast", "one_fast.*"]),
    install_requires=[
        "torch>=2.4",
        "numpy",
        "triton; platform_system == 'Linux'",
    ],
    extras_require={
        "dev": [
            "pytest",
            "pytest-benchmark",
            "hypothesis",
            "ruff",
            "nvidia-ml-py",
            "scikit-learn",
        ],
    },
)
