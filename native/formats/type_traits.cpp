#include "formats/ggml_types.h"

#include <stdexcept>
#include <string>

namespace pyresa {

namespace {
struct TraitsTable {
  TypeTraits t[kGgmlTypeCount];
  TraitsTable() {
    for (auto& e : t) e = {nullptr, 0, 0, false, GgmlType::F32};
    auto set = [&](GgmlType id, const char* name, int bs, int ts, bool sup, GgmlType dot) {
      t[static_cast<int>(id)] = {name, bs, ts, sup, dot};
    };
    set(GgmlType::F32, "F32", 1, 4, true, GgmlType::F32);
    set(GgmlType::F16, "F16", 1, 2, true, GgmlType::F32);
    set(GgmlType::BF16, "BF16", 1, 2, true, GgmlType::F32);
    set(GgmlType::Q4_0, "Q4_0", QK4_0, sizeof(block_q4_0), true, GgmlType::Q8_0);
    set(GgmlType::Q4_1, "Q4_1", QK4_1, sizeof(block_q4_1), true, GgmlType::Q8_1);
    set(GgmlType::Q5_0, "Q5_0", QK5_0, sizeof(block_q5_0), true, GgmlType::Q8_0);
    set(GgmlType::Q5_1, "Q5_1", QK5_1, sizeof(block_q5_1), true, GgmlType::Q8_1);
    set(GgmlType::Q8_0, "Q8_0", QK8_0, sizeof(block_q8_0), true, GgmlType::Q8_0);
    set(GgmlType::Q8_1, "Q8_1", QK8_1, sizeof(block_q8_1), false, GgmlType::Q8_1);
    set(GgmlType::Q2_K, "Q2_K", QK_K, 84, false, GgmlType::Q8_K);
    set(GgmlType::Q3_K, "Q3_K", QK_K, 110, false, GgmlType::Q8_K);
    set(GgmlType::Q4_K, "Q4_K", QK_K, sizeof(block_q4_K), true, GgmlType::Q8_K);
    set(GgmlType::Q5_K, "Q5_K", QK_K, sizeof(block_q5_K), true, GgmlType::Q8_K);
    set(GgmlType::Q6_K, "Q6_K", QK_K, sizeof(block_q6_K), true, GgmlType::Q8_K);
    set(GgmlType::Q8_K, "Q8_K", QK_K, sizeof(block_q8_K), false, GgmlType::Q8_K);
  }
};
const TraitsTable& table() {
  static const TraitsTable tt;
  return tt;
}
}  // namespace

bool is_valid_type(int32_t id) {
  return id >= 0 && id < kGgmlTypeCount && table().t[id].name != nullptr;
}

const TypeTraits& type_traits(GgmlType t) {
  int id = static_cast<int>(t);
  if (!is_valid_type(id)) throw std::invalid_argument("unknown ggml type id " + std::to_string(id));
  return table().t[id];
}

size_t row_size(GgmlType t, int64_t n) {
  const TypeTraits& tt = type_traits(t);
  if (n % tt.block_size != 0)
    throw std::invalid_argument(std::string("row of ") + std::to_string(n) + " elements is not a multiple of the " +
                                tt.name + " block size " + std::to_string(tt.block_size));
  return static_cast<size_t>(n / tt.block_size) * tt.type_size;
}

}  // namespace pyresa
