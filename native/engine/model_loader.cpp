#include "engine/model_loader.h"

#include <string>

#include "engine/errors.h"
#include "formats/ggml_types.h"

namespace pyresa {

namespace {

std::string shape_str(const int64_t* ne, int n) {
  std::string s = "[";
  for (int i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

class TensorTable {
 public:
  explicit TensorTable(const std::map<std::string, TensorRef>& t) : t_(t) {}

  bool has(const std::string& name) const { return t_.count(name) > 0; }

  // A matrix of `rows` rows of `cols` (ggml ne = [cols, rows]), or a vector of `cols` (rows = 0).
  WeightView get(const std::string& name, int64_t cols, int64_t rows, bool float_only = false) const {
    auto it = t_.find(name);
    if (it == t_.end()) throw ModelFormatError("missing tensor '" + name + "'");
    const TensorRef& r = it->second;
    if (!is_valid_type(r.type) || !type_traits(static_cast<GgmlType>(r.type)).supported)
      throw UnsupportedError("tensor '" + name + "' has type " +
                             (is_valid_type(r.type) ? type_traits(static_cast<GgmlType>(r.type)).name
                                                    : "id " + std::to_string(r.type)) +
                             ", which pyresa does not support (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, "
                             "Q5_K, Q6_K)");
    const GgmlType type = static_cast<GgmlType>(r.type);
    const int64_t want[2] = {cols, rows};
    const int want_dims = rows > 0 ? 2 : 1;
    bool ok = r.ne[0] == cols && (rows > 0 ? r.ne[1] == rows : r.ne[1] == 1) && r.ne[2] == 1 && r.ne[3] == 1;
    if (!ok)
      throw ModelFormatError("tensor '" + name + "' has shape " + shape_str(r.ne, r.n_dims > 0 ? r.n_dims : 1) +
                             ", expected " + shape_str(want, want_dims));
    if (float_only && type != GgmlType::F32)
      throw UnsupportedError("tensor '" + name + "' must be F32 (norms and biases), found " + type_traits(type).name);
    if (cols % type_traits(type).block_size != 0)
      throw ModelFormatError("tensor '" + name + "': row length " + std::to_string(cols) +
                             " is not a multiple of the " + type_traits(type).name + " block size");
    WeightView w;
    w.type = type;
    w.cols = cols;
    w.rows = rows > 0 ? rows : 1;
    w.data = r.data;
    w.row_bytes = row_size(type, cols);
    if (r.n_bytes < w.row_bytes * w.rows)
      throw ModelFormatError("tensor '" + name + "' has " + std::to_string(r.n_bytes) + " bytes of data, needs " +
                             std::to_string(w.row_bytes * w.rows) + " (truncated file?)");
    return w;
  }

 private:
  const std::map<std::string, TensorRef>& t_;
};

}  // namespace

void validate_config(const ModelConfig& c) {
  if (c.arch != "llama" && c.arch != "qwen2")
    throw UnsupportedError("architecture '" + c.arch + "' is not supported (supported: llama, qwen2)");
  auto positive = [](int v, const char* what) {
    if (v <= 0) throw ModelFormatError(std::string("model metadata: ") + what + " must be positive, got " + std::to_string(v));
  };
  positive(c.n_layer, "block_count");
  positive(c.n_embd, "embedding_length");
  positive(c.n_head, "attention.head_count");
  positive(c.n_head_kv, "attention.head_count_kv");
  positive(c.head_dim, "head dimension");
  positive(c.n_ff, "feed_forward_length");
  positive(c.n_vocab, "vocabulary size");
  if (c.n_head % c.n_head_kv != 0)
    throw ModelFormatError("head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " +
                           std::to_string(c.n_head_kv));
  if (c.head_dim % 16 != 0 || c.head_dim > 256)
    throw UnsupportedError("head dimension " + std::to_string(c.head_dim) + " (pyresa needs a multiple of 16, at most 256)");
  if (c.n_head / c.n_head_kv > 16) throw UnsupportedError("more than 16 query heads per KV head");
}

ModelWeights load_model_weights(const ModelConfig& c, const std::map<std::string, TensorRef>& tensors) {
  validate_config(c);
  TensorTable t(tensors);
  const int64_t e = c.n_embd, qd = (int64_t)c.n_head * c.head_dim, kvd = (int64_t)c.n_head_kv * c.head_dim;
  ModelWeights w;
  w.token_embd = t.get("token_embd.weight", e, c.n_vocab);
  w.output_norm = t.get("output_norm.weight", e, 0, true);
  w.output = t.has("output.weight") ? t.get("output.weight", e, c.n_vocab) : w.token_embd;
  const bool biases = c.arch == "qwen2";
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights L;
    L.attn_norm = t.get(p + "attn_norm.weight", e, 0, true);
    L.wq = t.get(p + "attn_q.weight", e, qd);
    L.wk = t.get(p + "attn_k.weight", e, kvd);
    L.wv = t.get(p + "attn_v.weight", e, kvd);
    L.wo = t.get(p + "attn_output.weight", qd, e);
    if (biases) {
      L.bq = t.get(p + "attn_q.bias", qd, 0, true);
      L.bk = t.get(p + "attn_k.bias", kvd, 0, true);
      L.bv = t.get(p + "attn_v.bias", kvd, 0, true);
    }
    L.ffn_norm = t.get(p + "ffn_norm.weight", e, 0, true);
    L.w_gate = t.get(p + "ffn_gate.weight", e, c.n_ff);
    L.w_up = t.get(p + "ffn_up.weight", e, c.n_ff);
    L.w_down = t.get(p + "ffn_down.weight", c.n_ff, e);
    w.layers.push_back(L);
  }
  return w;
}

}  // namespace pyresa
