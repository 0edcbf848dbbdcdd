"""
pydoctor, told that txsmtpsrv's public names live in C{txsmtpsrv}.

Every public class is defined in a private module (C{_options.py}...) and
re-exported by C{txsmtpsrv/__init__.py}'s C{__all__}. pydoctor moves a
re-exported object into the package only when its own module does not list
it in C{__all__} too, and ours do; so this System moves every name of the
package's C{__all__} before the usual post-processing. The reference then
documents C{txsmtpsrv.ServerOptions}, not C{txsmtpsrv._options.ServerOptions}.

It also adds each dataclass field's default to its docstring ("Default:
..."), as C{help()} and the README show it: pydoctor prints the type of a
class variable but not its value.

Used through C{[tool.pydoctor] system-class} in pyproject.toml (run
pydoctor with the repository root on C{sys.path}, e.g. C{python -m pydoctor}).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Optional

from pydoctor import model

from txsmtpsrv._optdoc import _default

PACKAGE = "txsmtpsrv"


class System(model.System):
    """A pydoctor System that documents C{txsmtpsrv.__all__} names in C{txsmtpsrv}."""

    def postProcess(self) -> None:
        package = self.allobjects.get(PACKAGE)
        if isinstance(package, model.Module):
            for name in package.all or ():
                if name in package.contents:
                    continue
                target = self._follow(package.expandName(name))
                if (target is not None and target.parent is not None and target.parent is not package
                        and target.parent.fullName().startswith(PACKAGE + "._")
                        and isinstance(target, (model.Class, model.Function, model.Attribute))):
                    target.reparent(package, name)
        for cls in list(self.objectsOfType(model.Class)):
            self._document_defaults(cls)
        super().postProcess()

    def _follow(self, full_name: str) -> Optional[model.Documentable]:
        """The object C{full_name} names, through re-exports in subpackages."""
        for _ in range(10):
            target = self.objForFullName(full_name)
            if target is not None:
                return target
            module_name, _, attribute = full_name.rpartition(".")
            module = self.objForFullName(module_name)
            if not isinstance(module, model.Module):
                return None
            expanded = module.expandName(attribute)
            if expanded == full_name:
                return None
            full_name = expanded
        return None

    def _document_defaults(self, cls: model.Class) -> None:
        runtime = _runtime_object(cls.fullName())
        if not (isinstance(runtime, type) and dataclasses.is_dataclass(runtime)):
            return
        for f in dataclasses.fields(runtime):
            attribute = cls.contents.get(f.name)
            if isinstance(attribute, model.Attribute) and attribute.docstring:
                default = _default(f).replace("{", "\x00").replace("}", "E{rb}").replace("\x00", "E{lb}")
                attribute.docstring = f"{attribute.docstring.rstrip()}\n\nDefault: C{{{default}}}."
                attribute.parsed_docstring = None


def _runtime_object(full_name: str) -> Optional[Any]:
    """The object pydoctor calls C{full_name}, imported (None if that fails)."""
    module_name, _, attribute = full_name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute, None)
    except ImportError:
        return None
