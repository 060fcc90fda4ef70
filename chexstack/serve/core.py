"""The operations both front ends (REST and gRPC) offer, with metrics recorded in one place."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from chexstack.serve import inference
from chexstack.serve.batching import Batcher
from chexstack.serve.errors import ServeError
from chexstack.serve.metrics import Metrics
from chexstack.serve.registry import Registry, Servable, VersionStatus


class ModelServer:
    def __init__(
        self, registry: Registry, batcher: Batcher | None = None, metrics: Metrics | None = None
    ) -> None:
        self.registry = registry
        self.batcher = batcher
        self.metrics = metrics or Metrics(self._loaded_gauge)

    def _loaded_gauge(self) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            (("model_name", name), ("model_version", str(v))): 1.0
            for name, versions in self.registry.loaded_versions().items()
            for v in versions
        }

    def predict(
        self,
        name: str,
        inputs: dict[str, np.ndarray] | None,
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str = "",
        output_filter: Iterable[str] = (),
        entrypoint: str = "REST",
        input_builder: Any = None,
    ) -> tuple[Servable, str, dict[str, np.ndarray]]:
        """Run a signature; `input_builder(specs)` builds inputs once the signature is known (REST JSON)."""
        started = time.monotonic()
        status = "OK"
        try:
            servable = self.registry.resolve(name, version, label)
            signature_name = signature_name or inference.DEFAULT_SIGNATURE
            if input_builder is not None:
                inputs = input_builder(inference.input_specs(servable, signature_name))
            assert inputs is not None
            inference.check_inputs(servable, signature_name, inputs)
            if self.batcher is not None:
                outputs = self.batcher.submit(servable, signature_name, inputs)
            else:
                outputs = inference.run(servable, signature_name, inputs)
            return servable, signature_name, inference.select_outputs(outputs, output_filter)
        except ServeError as exc:
            status = exc.code.name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            self.metrics.record_request(name, "predict", entrypoint, status, time.monotonic() - started)

    def on_batch(self, model: str, size: int) -> None:
        self.metrics.batch_size.observe(float(size), model_name=model)

    def metadata(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        return self.registry.resolve(name, version, label)

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> dict[int, VersionStatus]:
        return self.registry.status(name, version, label)
