"""Packaging glue: everything is in setup.cfg except the ``enclave/`` mapping.

The in-enclave program lives in the top-level ``enclave/`` directory (next to the image build
files) and is installed as ``sops_enclave.enclave``, never as a top-level ``enclave`` package
(a different distribution of that name exists on PyPI).
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["sops_enclave", "sops_enclave.*"]) + ["sops_enclave.enclave"],
    package_dir={"sops_enclave.enclave": "enclave"},
    # The image build files travel with the enclave program, so a wheel measures as a checkout.
    package_data={"sops_enclave": ["py.typed"],
                  "sops_enclave.keyservice": ["*.proto", "*.pyi"],
                  "sops_enclave.enclave": ["Dockerfile", "requirements.lock"]},
)
