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
    "Report": "fxopt.report",
    "reports": "fxopt.records",
    "last_report": "fxopt.records",
    "clear_reports": "fxopt.records",
    "step_report": "fxopt.records",
    "StepReport": "fxopt.report",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

if TYPE_CHECKING:
    from fxopt.compiler import FxoptBackend, backend
    from fxopt.config import Budget, DeviceProfile, LowBit, Options, OptionsError
    from fxopt.explainer import explain
    from fxopt.records import clear_reports, last_report, reports, step_report
    from fxopt.report import Report, StepReport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fxopt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
