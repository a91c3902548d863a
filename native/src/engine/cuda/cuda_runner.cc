#include "engine/cuda/cuda_runner.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>

#include "engine/model_tensors.h"
#include "engine/rope_config.h"
#include "memory/cuda/device_arena.h"
#include "util/error.h"

namespace ew {
namespace {

constexpr size_t kMaxGraphs = 64;

cudaStream_t cs(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace

struct CudaRunner::Graph {
  cudaGraphExec_t exec = nullptr;
  Outputs out;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
  }
};

ModelTensors upload_model_tensors(const ModelWeights& w, std::vector<cuda::DeviceBuffer>& storage) {
  if (w.experts && !w.experts->device_memory())
    fail("upload_model_tensors: the routed experts must live in device memory (ExpertPoolCuda)");
  TensorPlacement upload;
  upload.place = [&](const TensorView& t) -> Weight {
    if (!t.data) return {};
    storage.emplace_back(t.nbytes());
    storage.back().upload(t.data, t.nbytes());
    return {storage.back().data(), t.dtype};
  };
  upload.place_gate_up = [&](const TensorView& gate, const TensorView& up, Weight* g, Weight* u) {
    if (gate.dtype != up.dtype)
      fail("gate_proj is ", dtype_name(gate.dtype), " but up_proj is ", dtype_name(up.dtype),
           ": the CUDA backend needs them in one dtype");
    // gate [W, H] and up [W, H] in one buffer: matmul_pair reads both in one launch.
    storage.emplace_back(gate.nbytes() + up.nbytes());
    storage.back().upload(gate.data, gate.nbytes());
    storage.back().upload(up.data, up.nbytes(), gate.nbytes());
    const auto* base = static_cast<const char*>(storage.back().data());
    *g = {base, gate.dtype};
    *u = {base + gate.nbytes(), up.dtype};
  };
  return model_tensors(w, upload);
}

CudaRunner::CudaRunner(const ModelConfig& cfg, ModelTensors tensors, const KvCache& kv, int n_reroute_rows,
                       std::vector<cuda::DeviceBuffer> storage)
    : cfg_(cfg),
      tensors_(std::move(tensors)),
      storage_(std::move(storage)),
      rope_(make_rope_table(cfg_)),
      ops_(stream_.get()),
      forward_(cfg_, tensors_, ops_, rope_.softmax_scale),
      arena_(device_arena_memory(), size_t{64} << 20) {
  if (kv.width() != cfg.kv_cache_width() || kv.n_layers() != cfg.num_hidden_layers)
    fail("CudaRunner: KV cache geometry does not match the config");
  if (kv.dtype() != DType::F32)
    fail("CudaRunner: the CUDA KV cache is fp32; a ", dtype_name(kv.dtype()), " KV cache is CPU-only");
  const size_t block_floats = static_cast<size_t>(kv.n_layers()) * kv.block_size() * kv.width();
  cache_buf_ = cuda::DeviceBuffer(static_cast<size_t>(kv.total_blocks()) * block_floats * sizeof(float));
  cache_buf_.fill_bytes(0);
  cache_ = PagedKvCache{cache_buf_.as<float>(), kv.n_layers(), kv.block_size(), kv.width(), DType::F32};
  n_rows_ = n_reroute_rows;
  reroute_ = cuda::DeviceBuffer(static_cast<size_t>(cfg.num_moe_layers()) * n_rows_ * cfg.n_routed_experts *
                                sizeof(int32_t));
  EW_CUDA_CHECK(cudaDeviceSynchronize());  // the fill ran on the legacy stream
}

CudaRunner::~CudaRunner() {
  graphs_.clear();
  if (meta_pinned_) cudaFreeHost(meta_pinned_);
}

std::string CudaRunner::device_name() const { return "cuda: " + cuda::device_description(); }

void CudaRunner::prepare(const StepTokens& st, const KvCache& kv, const RerouteTables& tables) {
  if (tables.n_rows() != n_rows_ || tables.n_experts() != cfg_.n_routed_experts)
    fail("CudaRunner: reroute tables of ", tables.n_rows(), " rows x ", tables.n_experts(), " experts, expected ",
         n_rows_, " x ", cfg_.n_routed_experts);
  const StepMetadata meta = pack_step_metadata(st, kv, rope_);
  const size_t total = meta.bytes.size();
  // The device copy lives at a fixed address (graphs read it); growing it drops them.
  if (meta_.bytes() < total) {
    graphs_.clear();
    seen_.clear();
    meta_ = cuda::DeviceBuffer(total + total / 2);
  }
  if (meta_pinned_bytes_ < meta_.bytes()) {
    if (meta_pinned_) EW_CUDA_CHECK(cudaFreeHost(meta_pinned_));
    meta_pinned_ = nullptr;
    EW_CUDA_CHECK(cudaMallocHost(&meta_pinned_, meta_.bytes()));
    meta_pinned_bytes_ = meta_.bytes();
  }
  std::memcpy(meta_pinned_, meta.bytes.data(), total);
  EW_CUDA_CHECK(cudaMemcpyAsync(meta_.data(), meta_pinned_, total, cudaMemcpyHostToDevice, cs(stream_.get())));
  inputs_ = step_inputs(meta, meta_.data());
  decode_ = meta.decode;

  if (tables.version() != reroute_version_ && reroute_.bytes() > 0) {
    // Pageable source: the copy is staged before this call returns, so the host table
    // may change afterwards (the engine changes it only between steps anyway).
    EW_CUDA_CHECK(cudaMemcpyAsync(reroute_.data(), tables.data().data(), reroute_.bytes(), cudaMemcpyHostToDevice,
                                  cs(stream_.get())));
    reroute_version_ = tables.version();
  }
}

CudaRunner::Outputs CudaRunner::forward_step(const SlotObserver* observe) {
  const RerouteTablesView tv{reroute_.as<int32_t>(), n_rows_, static_cast<int32_t>(cfg_.n_routed_experts)};
  Outputs o;
  o.logits = forward_.run(inputs_, cache_, tv, arena_, nullptr, observe);
  if (inputs_.n_out > 0) {
    o.ids = arena_.take_n<int32_t>(inputs_.n_out);
    o.logprob = arena_.take_n<float>(inputs_.n_out);
    ops_.argmax(o.logits, inputs_.n_out, cfg_.vocab_size, o.ids, o.logprob);
  }
  return o;
}

void CudaRunner::begin_step() {
  arena_.reset();
  if (arena_.generation() != graph_generation_) {  // the arena moved: captured addresses are stale
    graphs_.clear();
    graph_generation_ = arena_.generation();
  }
}

bool CudaRunner::capture(const GraphKey& key) {
  if (graphs_.size() >= kMaxGraphs) graphs_.clear();
  auto g = std::make_unique<Graph>();
  cudaGraph_t graph = nullptr;
  std::string why;
  cudaError_t err = cudaStreamBeginCapture(cs(stream_.get()), cudaStreamCaptureModeThreadLocal);
  if (err != cudaSuccess) {
    why = std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(err);
  } else {
    try {
      g->out = forward_step(nullptr);
    } catch (const std::exception& e) {
      why = e.what();
    }
    err = cudaStreamEndCapture(cs(stream_.get()), &graph);
    if (why.empty() && err != cudaSuccess) why = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(err);
    if (why.empty()) {
      err = cudaGraphInstantiate(&g->exec, graph, 0);
      if (err != cudaSuccess) why = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(err);
    }
    if (graph) cudaGraphDestroy(graph);
  }
  if (!why.empty()) {
    cudaGetLastError();  // a failed capture leaves an error behind; the eager run reports real ones
    ++stats_.capture_failures;
    std::fprintf(stderr,
                 "expertweave: CUDA graph capture failed for the decode shape (%lld tokens, %lld logit rows, context "
                 "%lld): %s; that shape runs eagerly\n",
                 static_cast<long long>(std::get<0>(key)), static_cast<long long>(std::get<1>(key)),
                 static_cast<long long>(std::get<2>(key)), why.c_str());
    return false;
  }
  EW_CUDA_CHECK(cudaGraphLaunch(g->exec, cs(stream_.get())));
  out_ = g->out;
  graphs_[key] = std::move(g);
  ++stats_.graph_captures;
  ++stats_.graph_replays;
  return true;
}

void CudaRunner::enqueue(bool use_graph) {
  if (inputs_.T == 0) fail("CudaRunner::enqueue: no step prepared");
  begin_step();
  const GraphKey key{inputs_.T, inputs_.n_out, inputs_.max_ctx};
  if (use_graph && decode_) {
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
      EW_CUDA_CHECK(cudaGraphLaunch(it->second->exec, cs(stream_.get())));
      out_ = it->second->out;
      ++stats_.graph_replays;
      return;
    }
    int& seen = seen_[key];
    if (seen++ >= 1) {  // the first run sized the arena: capture now
      if (capture(key)) return;
      seen = INT_MIN / 2;  // this shape does not capture: always eager
      begin_step();
    }
  }
  out_ = forward_step(nullptr);
  ++stats_.eager_steps;
}

StepLogits CudaRunner::collect(const std::vector<uint8_t>& need_whole) {
  const int64_t n = inputs_.n_out, V = cfg_.vocab_size;
  if (static_cast<int64_t>(need_whole.size()) != n)
    fail("CudaRunner::collect: ", need_whole.size(), " flags for ", n, " logit rows");
  StepLogits out;
  out.row_of.assign(static_cast<size_t>(n), -1);
  out.greedy.assign(static_cast<size_t>(n), -1);
  out.greedy_logprob.assign(static_cast<size_t>(n), 0.f);
  const cudaStream_t s = cs(stream_.get());
  if (n > 0) {
    EW_CUDA_CHECK(cudaMemcpyAsync(out.greedy.data(), out_.ids, n * 4, cudaMemcpyDeviceToHost, s));
    EW_CUDA_CHECK(cudaMemcpyAsync(out.greedy_logprob.data(), out_.logprob, n * 4, cudaMemcpyDeviceToHost, s));
    int64_t whole = 0;
    for (int64_t i = 0; i < n; ++i)
      if (need_whole[i]) out.row_of[i] = whole++;
    out.rows.resize(static_cast<size_t>(whole * V));
    if (whole == n) {
      EW_CUDA_CHECK(cudaMemcpyAsync(out.rows.data(), out_.logits, n * V * 4, cudaMemcpyDeviceToHost, s));
    } else {
      for (int64_t i = 0; i < n; ++i)
        if (out.row_of[i] >= 0)
          EW_CUDA_CHECK(cudaMemcpyAsync(out.rows.data() + out.row_of[i] * V, out_.logits + i * V, V * 4,
                                        cudaMemcpyDeviceToHost, s));
    }
  }
  stream_.sync();
  return out;
}

StepLogits CudaRunner::run(const StepTokens& st, const std::vector<uint8_t>& need_whole, KvCache& kv,
                           const RerouteTables& tables) {
  prepare(st, kv, tables);
  enqueue(/*use_graph=*/true);
  return collect(need_whole);
}

std::vector<int> CudaRunner::distinct_slots() {
  const int64_t n_moe = cfg_.num_moe_layers(), per = inputs_.T * cfg_.num_experts_per_tok;
  std::vector<int> out;
  if (n_moe == 0) return out;
  cuda::DeviceBuffer rec(static_cast<size_t>(n_moe * per) * 4);
  const SlotObserver record = [&](int moe_layer, const int32_t* slots, int64_t n) {
    EW_CUDA_CHECK(cudaMemcpyAsync(rec.as<int32_t>() + moe_layer * per, slots, static_cast<size_t>(n) * 4,
                                  cudaMemcpyDeviceToDevice, cs(stream_.get())));
  };
  begin_step();
  out_ = forward_step(&record);
  stream_.sync();
  std::vector<int32_t> slots(static_cast<size_t>(n_moe * per));
  rec.download(slots.data(), slots.size() * 4);
  for (int64_t l = 0; l < n_moe; ++l) {
    std::vector<int32_t> v(slots.begin() + l * per, slots.begin() + (l + 1) * per);
    std::sort(v.begin(), v.end());
    out.push_back(static_cast<int>(std::unique(v.begin(), v.end()) - v.begin()));
  }
  return out;
}

}  // namespace ew
