"""medsynth: slice-wise CycleGAN translation of medical images (T1<->T2, MR<->CT, X-ray enhancement)."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="medsynth",
    version="0.1.0",
    description="Unpaired medical image translation (CycleGAN) with MONAI: train, convert, evaluate, serve, Slicer",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["medsynth", "medsynth.*"]),
    package_data={"medsynth": ["models/*.pt", "models/*.md", "models/*.json", "data/*.nii.gz", "data/*.png", "data/*.md"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.2",
        "monai>=1.4",
        "numpy>=1.24",
        "nibabel>=5.0",
        "SimpleITK>=2.3",
        "itk>=5.3",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "pillow>=9.0",
        "scikit-image>=0.21",
        "pydicom>=3.0",  # pydicom.pixels, save_as(enforce_file_format=...)
        "matplotlib>=3.6",
    ],
    extras_require={
        "server": ["fastapi>=0.110", "uvicorn>=0.27", "python-multipart>=0.0.9"],
        "slicer-test": ["slicer-core>=5.13"],
        "dev": ["pytest>=7", "httpx>=0.25", "fastapi>=0.110", "uvicorn>=0.27",
                "python-multipart>=0.0.9", "fire>=0.5", "jsonschema>=4"],
        # `python -m monai.bundle run` (an exported bundle) needs MONAI's optional command-line dependency, and
        # `monai.bundle.verify_metadata` its optional JSON-schema checker
        "bundle": ["fire>=0.5", "jsonschema>=4"],
    },
    entry_points={
        "console_scripts": [
            "medsynth-train=medsynth.cli:train_main",
            "medsynth-convert=medsynth.cli:convert_main",
            "medsynth-demo=medsynth.cli:demo_main",
            "medsynth-eval=medsynth.cli:eval_main",
            "medsynth-enhance=medsynth.cli:enhance_main",
            "medsynth-serve=medsynth.cli:serve_main",
            "medsynth-calibrate=medsynth.cli:calibrate_main",
        ]
    },
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Medical Science Apps."],
)
