"""
Packaging shim: all metadata lives in C{pyproject.toml}.

This file only keeps C{pip install -e .} working with a pip too old for
PEP 660 editable installs (it then runs C{setup.py develop}, which, like
C{--config-settings editable_mode=compat}, puts the checkout on C{sys.path}
so that Twisted finds C{twisted/plugins/txsmtpsrv_plugin.py} and
C{twistd smtpsrv} works from the working tree).  A PEP 660 "strict"
editable install would hide the plugin: Twisted's plugin discovery looks
for C{twisted/plugins} directories on C{sys.path}, which an import hook
does not provide.
"""

from setuptools import setup

setup()
