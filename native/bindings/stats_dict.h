// The attention counters of either engine (CPU or CUDA) as the dict Python reads
// (Model.last_score_stats, generation stats): one conversion, so the engines cannot drift apart.
#pragma once
#include <nanobind/nanobind.h>

#include "engine/engine.h"

namespace pyresa::bindings {

inline nanobind::dict stats_dict(const AttentionStats& s) {
  namespace nb = nanobind;
  nb::dict d;
  d["decode_steps"] = s.decode_steps;
  d["blocks_read"] = s.blocks_read;
  d["blocks_total"] = s.blocks_total;
  d["rectifications"] = s.rectifications;
  d["rectified_tokens"] = s.rectified_tokens;
  if (!s.audit_samples.empty()) {
    // Mean kept attention mass per layer (over sparse steps and KV heads).
    nb::list sel, orc;
    for (size_t l = 0; l < s.audit_samples.size(); ++l) {
      const double n = s.audit_samples[l] ? static_cast<double>(s.audit_samples[l]) : 1.0;
      sel.append(s.mass_selected[l] / n);
      orc.append(s.mass_oracle[l] / n);
    }
    d["mass_selected"] = sel;
    d["mass_oracle"] = orc;
  }
  return d;
}

}  // namespace pyresa::bindings
