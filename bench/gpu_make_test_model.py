#!/usr/bin/env python3
"""Write a copy of a GGUF model that keeps only its first N transformer blocks (same metadata,
vocabulary and embeddings; block_count = N). The GPU machine has no network, and the tree sent to
it is limited to 64 MiB: the default model (94 MB) travels as its first 12 blocks (~56 MB).
usage: gpu_make_test_model.py IN.gguf OUT.gguf N_LAYERS"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType


def main(src, dst, n_layers):
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == f"{arch}.block_count":
            w.add_uint32(name, n_layers)
            continue
        t = f.types[0]
        v = f.contents()
        if t == GGUFValueType.ARRAY:
            w.add_array(name, v)
        elif t == GGUFValueType.STRING:
            w.add_string(name, v)
        else:
            w.add_key_value(name, v, t)
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            continue
        data = np.asarray(t.data)
        w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
