#include "engine/cpu_runner.h"

#include "engine/model_tensors.h"
#include "engine/rope_config.h"
#include "util/error.h"

namespace ew {

ModelTensors host_model_tensors(const ModelWeights& w, HugePageCopies& copies) {
  if (w.experts && w.experts->device_memory())
    fail("CPU runner: the routed experts live in device memory; the CPU needs a host expert pool");
  TensorPlacement copied;
  auto copy = [&](const TensorView& t) {
    const Weight c{copies.copy(t.data, t.nbytes()), t.dtype};
    if (w.store) w.store->release_pages(t.data, t.nbytes());
    return c;
  };
  copied.place = copy;
  copied.place_gate_up = [&](const TensorView& gate, const TensorView& up, Weight* g, Weight* u) {
    *g = copy(gate);
    *u = copy(up);
  };
  return model_tensors(w, copied);
}

CpuRunner::CpuRunner(const ModelConfig& cfg, const ModelWeights& w, CpuPath path)
    : tensors_(host_model_tensors(w, copies_)),
      rope_(make_rope_table(cfg)),
      ops_(path),
      forward_(cfg, tensors_, ops_, rope_.softmax_scale),
      arena_(host_arena_memory()) {}

StepLogits CpuRunner::run(const StepTokens& st, const std::vector<uint8_t>&, KvCache& kv,
                          const RerouteTables& tables) {
  const int64_t V = forward_.config().vocab_size;
  const StepMetadata meta = pack_step_metadata(st, kv, rope_);
  if (!kv.has_host_storage()) fail("CPU runner: the KV cache has no host storage");
  const PagedKvCache lc{kv.block_layer(0, 0), kv.n_layers(), kv.block_size(), kv.width(), kv.dtype()};
  const RerouteTablesView tv{tables.data().data(), tables.n_rows(), tables.n_experts()};
  StepLogits out;
  out.rows.resize(static_cast<size_t>(meta.n_out * V));
  for (int64_t i = 0; i < meta.n_out; ++i) out.row_of.push_back(i);
  arena_.reset();
  forward_.run(step_inputs(meta, meta.bytes.data()), lc, tv, arena_, out.rows.data(), observe_ ? &observe_ : nullptr);
  return out;
}

}  // namespace ew
