"""Packaging for txsmtpsrv: the library plus its twistd plugin."""

from setuptools import setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

version: dict = {}
with open("txsmtpsrv/_version.py", encoding="utf-8") as f:
    exec(f.read(), version)

setup(
    name="txsmtpsrv",
    version=version["__version__"],
    description="An embeddable SMTP and LMTP server for Twisted",
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["txsmtpsrv", "twisted.plugins"],
    # The pytest plugin: top-level so that loading it does not import txsmtpsrv or Twisted.
    py_modules=["_txsmtpsrv_pytest"],
    package_data={"txsmtpsrv": ["py.typed"], "twisted": ["plugins/txsmtpsrv_plugin.py",
                                                          "plugins/txsmtpsrv_endpoints.py"]},
    include_package_data=True,
    # crochet runs the reactor thread of txsmtpsrv.testing.ThreadedServer, which the
    # pytest plugin (always registered below) uses: it must work after a plain install.
    # dkimpy checks DKIM/ARC signatures (PyNaCl: its Ed25519 ones), authres writes
    # Authentication-Results, publicsuffixlist finds DMARC's organizational domain.
    install_requires=["twisted[tls]>=26.4", "crochet>=2.1", "dkimpy>=1.1,<2", "pynacl>=1.4", "authres>=1.2",
                      "publicsuffixlist>=0.10"],
    entry_points={"pytest11": ["txsmtpsrv = _txsmtpsrv_pytest"]},
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6", "aiosmtplib>=3", "prometheus_client>=0.20", "bcrypt>=4"],
        "metrics": ["prometheus_client>=0.20"],
        "bcrypt": ["bcrypt>=4"],
        "bench": ["aiosmtpd>=1.4"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Email :: Mail Transport Agents",
    ],
)
