"""The partitioner installed when FXOPT_* variables are invalid: it fails the compile loudly."""

from __future__ import annotations

import hashlib
from typing import Any, NoReturn

from fxopt.compat import CustomPartitionerFn
from fxopt.config import OptionsError


class InvalidEnvironmentPartitioner(CustomPartitionerFn):
    def __init__(self, error: OptionsError) -> None:
        self.error = error

    def uuid(self) -> str:
        # Never share a cache entry with plain torch.compile: the compile must reach __call__.
        return "fxopt-invalid-environment-" + hashlib.sha256(str(self.error).encode()).hexdigest()

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise OptionsError(f"fxopt is enabled by FXOPT but not configured correctly: {self.error}")
