"""Streaming GGUF output: header and tensor table first (every tensor's type and size is known
from the plan), then each tensor's data, converted in chunks of rows. Peak memory is one chunk
of float32 rows plus its quantized bytes, whatever the model's size.

The file is written under a temporary name beside OUT and renamed over OUT only once complete,
so a failed or interrupted conversion never leaves a truncated OUT."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
from tqdm import tqdm

from pyresa import _core
from pyresa.errors import ModelFormatError

from .plan import ConversionPlan, TensorJob
from .recipes import OUTTYPES, tensor_type

CHUNK_ELEMENTS = 1 << 24  # float32 elements converted at a time (64 MiB)


def _nbytes(job: TensorJob) -> int:
    return job.n_rows * _core.row_size(int(job.ggml_type), job.row_elements)


def _write_tensor(fout, job: TensorJob, n_threads: int, bar: tqdm) -> None:
    if job.raw is not None and job.source_type == job.ggml_type:
        path, offset, nbytes = job.raw
        with open(path, "rb") as src:
            src.seek(offset)
            left = nbytes
            while left:
                block = src.read(min(left, 1 << 24))
                if not block:
                    raise ModelFormatError(f"{job.where}: file ends inside its data")
                fout.write(block)
                left -= len(block)
                bar.update(len(block))
        return
    rows_per_chunk = max(1, CHUNK_ELEMENTS // job.row_elements)
    for r0 in range(0, job.n_rows, rows_per_chunk):
        r1 = min(job.n_rows, r0 + rows_per_chunk)
        x = np.ascontiguousarray(job.read_rows(r0, r1), dtype=np.float32)
        if x.shape != (r1 - r0, job.row_elements):
            raise ModelFormatError(f"{job.where}: read rows of shape {x.shape}, expected {(r1 - r0, job.row_elements)}")
        if not np.isfinite(x).all():
            raise ModelFormatError(f"{job.where}: contains NaN or infinite values (rows {r0}..{r1})")
        q = _core.quantize_matrix(int(job.ggml_type), x, n_threads)
        fout.write(memoryview(q).cast("B"))
        bar.update(q.nbytes)


def write_gguf(plan: ConversionPlan, out: Path, outtype: str, *, n_threads: int = 0,
               progress: bool | None = None) -> dict:
    """Write `plan` to `out` with `outtype`'s recipe. progress None: a bar when stderr is a terminal."""
    out = Path(out)
    has_output = any(j.name == "output.weight" for j in plan.tensors)
    for job in plan.tensors:
        job.ggml_type = tensor_type(outtype, job.name, job.shape, plan.n_layer, has_output)

    w = gguf.GGUFWriter(None, plan.arch)
    plan.write_metadata(w)  # may raise (tokenizer, metadata): nothing is on disk yet
    w.add_file_type(int(OUTTYPES[outtype][1]))
    if any(j.ggml_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                               gguf.GGMLQuantizationType.BF16) for j in plan.tensors):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    total = 0
    for job in plan.tensors:
        nbytes = _nbytes(job)
        total += nbytes
        w.add_tensor_info(job.name, job.shape, np.dtype(np.float32), nbytes, raw_dtype=job.ggml_type)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    free = shutil.disk_usage(out.parent).free
    if free < total:
        raise OSError(f"{out.parent}: {free / 2**30:.1f} GiB free, the output needs {total / 2**30:.1f} GiB")
    try:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0]
        w.write_padding(fout, fout.tell())
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                  disable=(not sys.stderr.isatty()) if progress is None else not progress,
                  file=sys.stderr) as bar:
            for i, job in enumerate(plan.tensors):
                bar.set_description(f"[{i + 1}/{len(plan.tensors)}] {job.name} {job.ggml_type.name}")
                _write_tensor(fout, job, n_threads, bar)
                w.write_padding(fout, _nbytes(job))
        fout.flush()
        os.fsync(fout.fileno())
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    counts: dict[str, int] = {}
    for job in plan.tensors:
        counts[job.ggml_type.name] = counts.get(job.ggml_type.name, 0) + 1
    return {"path": str(out), "bytes": out.stat().st_size, "tensors": len(plan.tensors), "types": counts,
            **plan.summary}
