"""fxopt: train under a memory budget with torch.compile.

Public surface: `fxopt.backend(**options)`, `fxopt.explain(...)`, `fxopt.Options`,
`fxopt.last_report()`, `fxopt.reports()`, `fxopt.step_report()`.
`torch.compile(model, backend="fxopt")` works without importing this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# This package is imported while `import torch` is still running (the FXOPT autoload hook), so
# nothing heavy is imported at module level: names resolve lazily on first use.
_EXPORTS = {
    "Options": "fxopt.config",
    "OptionsError": "fxopt.config",
    "Budget": "fxopt.config",
    "LowBit": "fxopt.config",
    "DeviceProfile": "fxopt.config",
    "backend": "fxopt.compiler",
    "explain": "fxopt.explainer",
    "FxoptBackend": "fxopt.compiler",
    "Report": "fxopt.report.model",
    "reports": "fxopt.report.records",
    "last_report": "fxopt.report.records",
    "clear_reports": "fxopt.report.records",
    "step_report": "fxopt.report.records",
    "StepReport": "fxopt.report.model",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

if TYPE_CHECKING:  # the lazy names above, for type checkers
    from fxopt.compiler import FxoptBackend, backend  # noqa: F401
    from fxopt.config import Budget, DeviceProfile, LowBit, Options, OptionsError  # noqa: F401
    from fxopt.explainer import explain  # noqa: F401
    from fxopt.report.model import Report, StepReport  # noqa: F401
    from fxopt.report.records import clear_reports, last_report, reports, step_report  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fxopt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
