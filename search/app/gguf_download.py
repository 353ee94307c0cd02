"""``POST /v1/shapes/gguf``: a shape on the front as a GGUF file with random weights, for the page's
download button (llama.cpp measures speed the same on any weights; ``moeplan export --gguf`` is the
same export on the command line)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.background import BackgroundTask

from scaling.checks import check_number
from scaling.errors import UserError

# bytes per weight of each type the writer produces (q8_0 and q4_0: 32 weights and one fp16 scale)
TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
MAX_DOWNLOAD_BYTES = 2e9  # a download the server writes to its own disk first: bounded before any work


class GGUFBody(BaseModel):
    """One shape to export: its arch object (a plan entry's ``arch``) and the GGUF type."""

    model_config = ConfigDict(extra="forbid")
    arch: dict[str, Any] = Field(..., description="an object --arch accepts (a plan entry's arch)")
    type: Literal["f32", "f16", "q8_0", "q4_0"] = "q4_0"
    seed: int = 0

    @field_validator("seed")
    @classmethod
    def _seed(cls, value):
        return check_number(value, "seed", integer=True, minimum=0, maximum=2**32 - 1)

    def spec(self):
        """The shape, refused before any write when its file would exceed the download limit."""
        from scaling.shape import accounting
        from scaling.shape.arch import ArchSpec

        spec = ArchSpec.from_dict(self.arch)
        size = float(accounting.total_params(spec)) * TYPE_BYTES[self.type]
        if size > MAX_DOWNLOAD_BYTES:
            raise UserError(
                f"type: this shape at {self.type} is about {size / 1e9:.3g} GB, over the download limit of "
                f"{MAX_DOWNLOAD_BYTES / 1e9:g} GB; choose q4_0, or run `moeplan export --gguf` on your machine"
            )
        return spec


def add_gguf_download(app: FastAPI, secured: dict[str, Any]) -> None:
    """The download route; the file and its folder are removed once sent."""

    @app.post("/v1/shapes/gguf", response_class=FileResponse, **secured)
    def gguf_file(body: GGUFBody) -> FileResponse:
        """The shape as a GGUF file (random weights); its SHA-256 in the ``X-Moeplan-Sha256`` header."""
        from search.app.gguf_export import export_shape

        spec = body.spec()
        name = re.sub(r"[^A-Za-z0-9._+-]", "_", spec.name or "shape")[:100]
        folder = Path(tempfile.mkdtemp(prefix="moeplan-gguf-"))
        try:
            result = export_shape(spec, folder / f"{name}.gguf", body.type, seed=body.seed)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(
            result.path,
            media_type="application/octet-stream",
            filename=result.path.name,
            headers={"X-Moeplan-Sha256": str(result.manifest.get("sha256", ""))},
            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
        )
