"""ggml's own CPU ops through ctypes, as an outside oracle: the libggml that llama-cpp-python
installs (site-packages/llama_cpp/lib or site-packages/lib), signatures from its headers
(site-packages/include/ggml.h, ggml-cpu.h).

Only what the attention tests need: ggml_flash_attn_ext for one query token.
"""

from __future__ import annotations

import ctypes
import os
import sysconfig
from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_STATUS_SUCCESS = 0


class _InitParams(ctypes.Structure):
    # struct ggml_init_params { size_t mem_size; void * mem_buffer; bool no_alloc; };
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _lib_dirs() -> list[Path]:
    dirs = []
    purelib = Path(sysconfig.get_paths()["purelib"])
    try:
        import llama_cpp  # noqa: F401  (only to locate the package)

        dirs.append(Path(llama_cpp.__file__).parent / "lib")
    except ImportError:
        pass
    dirs += [purelib / "llama_cpp" / "lib", purelib / "lib"]
    if os.environ.get("PYRESA_GGML_LIB_DIR"):
        dirs.insert(0, Path(os.environ["PYRESA_GGML_LIB_DIR"]))
    return dirs


def find_ggml_dir() -> Path | None:
    for d in _lib_dirs():
        if all((d / n).exists() for n in ("libggml-base.so", "libggml-cpu.so")):
            return d
    return None


class Ggml:
    """A loaded libggml (base + cpu)."""

    def __init__(self, lib_dir: Path | None = None):
        lib_dir = lib_dir or find_ggml_dir()
        if lib_dir is None:
            raise OSError("libggml not found (install llama-cpp-python)")
        self.lib_dir = lib_dir
        mode = ctypes.RTLD_GLOBAL
        self.base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=mode)
        self.cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=mode)
        vp, sz, i64, c_int, c_float = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int, ctypes.c_float
        b, c = self.base, self.cpu

        def sig(fn, res, *args):
            fn.restype = res
            fn.argtypes = list(args)

        sig(b.ggml_init, vp, _InitParams)
        sig(b.ggml_free, None, vp)
        sig(b.ggml_new_tensor_4d, vp, vp, c_int, i64, i64, i64, i64)
        sig(b.ggml_view_3d, vp, vp, vp, i64, i64, i64, sz, sz, sz)
        sig(b.ggml_get_data, vp, vp)
        sig(b.ggml_nbytes, sz, vp)
        # ggml_flash_attn_ext(ctx, q, k, v, mask, scale, max_bias, logit_softcap)
        sig(b.ggml_flash_attn_ext, vp, vp, vp, vp, vp, vp, c_float, c_float, c_float)
        sig(b.ggml_new_graph, vp, vp)
        sig(b.ggml_build_forward_expand, None, vp, vp)
        sig(b.ggml_graph_overhead, sz)
        sig(b.ggml_tensor_overhead, sz)
        sig(c.ggml_graph_compute_with_ctx, c_int, vp, vp, c_int)
        sig(c.ggml_cpu_init, None)
        c.ggml_cpu_init()

    def _tensor(self, ctx, gtype: int, ne: tuple[int, int, int, int], data: np.ndarray):
        t = self.base.ggml_new_tensor_4d(ctx, gtype, *ne)
        if not t:
            raise MemoryError("ggml_new_tensor_4d failed")
        raw = np.ascontiguousarray(data)
        assert self.base.ggml_nbytes(t) == raw.nbytes
        ctypes.memmove(self.base.ggml_get_data(t), raw.ctypes.data, raw.nbytes)
        return t

    def flash_attn_ext(self, q: np.ndarray, K: np.ndarray, V: np.ndarray, n_kv: int, scale: float,
                       n_threads: int = 1) -> np.ndarray:
        """One query token: q [n_q_heads, D] f32; K, V [n_kv_heads, n_ctx, D] f16, of which the
        first n_kv tokens are viewed (ggml ne = [D, n_kv, n_kv_heads], nb2 = n_ctx*D*2, as in a
        KV cache). mask = NULL, max_bias = 0, logit_softcap = 0. Returns [n_q_heads, D] f32."""
        with FlashAttnGraph(self, q, K, V, n_kv, scale) as g:
            return g.compute(n_threads)


class FlashAttnGraph:
    """A ggml context holding q, K, V and a ggml_flash_attn_ext graph, computable repeatedly
    (for timing ggml's op without the setup)."""

    def __init__(self, ggml: Ggml, q: np.ndarray, K: np.ndarray, V: np.ndarray, n_kv: int, scale: float):
        nq, D = q.shape
        H, n_ctx, Dk = K.shape
        assert Dk == D and V.shape == K.shape and 0 < n_kv <= n_ctx
        self.g, self.shape = ggml, (nq, D)
        b = ggml.base
        mem = q.nbytes + K.nbytes + V.nbytes + nq * D * 4 + 16 * b.ggml_tensor_overhead() + b.ggml_graph_overhead()
        self.ctx = b.ggml_init(_InitParams(mem + (64 << 20), None, False))
        if not self.ctx:
            raise MemoryError("ggml_init failed")
        try:
            tq = ggml._tensor(self.ctx, GGML_TYPE_F32, (D, 1, nq, 1), q.astype(np.float32))
            tk = ggml._tensor(self.ctx, GGML_TYPE_F16, (D, n_ctx, H, 1), K.astype(np.float16))
            tv = ggml._tensor(self.ctx, GGML_TYPE_F16, (D, n_ctx, H, 1), V.astype(np.float16))
            nb1, nb2 = D * 2, n_ctx * D * 2
            k = b.ggml_view_3d(self.ctx, tk, D, n_kv, H, nb1, nb2, 0)
            v = b.ggml_view_3d(self.ctx, tv, D, n_kv, H, nb1, nb2, 0)
            self.out = b.ggml_flash_attn_ext(self.ctx, tq, k, v, None, scale, 0.0, 0.0)
            assert b.ggml_nbytes(self.out) == nq * D * 4  # ne = [D, n_q_heads, 1, 1], F32
            self.graph = b.ggml_new_graph(self.ctx)
            b.ggml_build_forward_expand(self.graph, self.out)
        except BaseException:
            self.close()
            raise

    def compute(self, n_threads: int = 1) -> np.ndarray:
        status = self.g.cpu.ggml_graph_compute_with_ctx(self.ctx, self.graph, n_threads)
        if status != GGML_STATUS_SUCCESS:
            raise RuntimeError(f"ggml_graph_compute_with_ctx: status {status}")
        nq, D = self.shape
        buf = (ctypes.c_float * (nq * D)).from_address(self.g.base.ggml_get_data(self.out))
        return np.frombuffer(buf, dtype=np.float32).reshape(nq, D).copy()

    def close(self):
        if self.ctx:
            self.g.base.ggml_free(self.ctx)
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
