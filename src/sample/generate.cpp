#include "aim/sample/generate.h"

#include <optional>
#include <vector>

#include "aim/core/error.h"
#include "aim/ops/dispatch.h"
#include "aim/ops/sampling.h"

#ifdef AIM_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace aim {

void SamplingOptions::validate() const {
  // Bounds that keep the guided and tempered logits finite in fp32 (a temperature of 1e-40 made
  // every row inf / NaN, which drew the last token everywhere).
  AIM_CHECK(cfg >= 0 && cfg <= 100, "--cfg: expected a number in [0, 100], found ", cfg);
  AIM_CHECK(temperature >= 1e-4 && temperature <= 1e4, "--temperature: expected a number in [1e-4, 1e4], found ",
            temperature, " ---> HINT: --top-k 1 samples greedily");
  AIM_CHECK(top_k >= 0, "--top-k: expected an integer >= 0 (0: no limit), found ", top_k);
  AIM_CHECK(top_p > 0 && top_p <= 1, "--top-p: expected a number in (0, 1], found ", top_p);
  AIM_CHECK(cfg_top_p > 0 && cfg_top_p <= 1, "--cfg-top-p: expected a number in (0, 1], found ", cfg_top_p);
}

double sample_uniform(uint64_t seed, int64_t sample, int64_t step) {
  return ops::keyed_uniform(seed, sample, step);
}

#ifdef AIM_WITH_CUDA
void capture_graph(at::cuda::CUDAGraph& graph, const std::function<void()>& body) {
  graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
  try {
    body();
  } catch (...) {
    // End the capture so that the stream and the caching allocator leave capture mode (the
    // allocator would otherwise keep its cache for the rest of the process); the error is
    // body()'s.
    try {
      graph.capture_end();
    } catch (...) {
    }
    throw;
  }
  graph.capture_end();
}
#endif

namespace {

/// The next tokens from the conditional rows and, when guided, the unconditional ones: the keyed
/// op does the guidance itself unless it is confined to the conditional nucleus, which runs first.
/// `step` is an int64 or a device-side step tensor (graph replay).
template <typename Step>
torch::Tensor next_tokens(const torch::Tensor& cond, const torch::Tensor& uncond, const SamplingOptions& o,
                          const torch::Tensor& ids, const Step& step) {
  // The sampling kernel may start before the lm_head ends (it waits for the logits): nothing
  // here writes a weight or a state (aim/ops/dispatch.h).
  ops::DependentLaunchScope dependent_launches;
  if (uncond.defined() && o.cfg_top_p < 1.0) {
    return ops::sample_tokens_keyed(ops::cfg_combine_nucleus(cond, uncond, o.cfg, o.cfg_top_p), torch::Tensor(),
                                    o.cfg, o.temperature, o.top_k, o.top_p, o.seed, ids, step);
  }
  return ops::sample_tokens_keyed(cond, uncond, o.cfg, o.temperature, o.top_k, o.top_p, o.seed, ids, step);
}

#ifdef AIM_WITH_CUDA
/// Tokens first+1..L-1 by replaying one captured step, where tokens 0..first-1 are known (drawn
/// from the class slot's logits, or a prompt with the one after it) and `in` holds token
/// first-1. Token `first` runs eagerly: it warms up what capture must not do itself (cuBLAS
/// handles and workspaces, allocator blocks). Inside the graph the step and position live in
/// device counters that the graph increments, the sampled token is written into the static
/// input of the next replay and into row `step` of the output.
void replay_tokens(AimModel& model, InferenceState& state, const torch::Tensor& ids,
                   const SamplingOptions& o, torch::Tensor& tokens_lb, torch::Tensor& in,
                   int64_t batch, bool guided, int64_t first) {
  const int64_t len = tokens_lb.size(0);
  const auto dev = in.device();
  const auto lopt = torch::dtype(torch::kLong).device(dev);
  auto step = torch::full({1}, first, lopt);                                                // token t
  auto position = torch::full({1}, first - 1 + model->config.decode_position_offset, lopt);  // of input t-1
  auto body = [&] {
    auto logits = model->step_at(state, in, position);
    auto next = next_tokens(logits.narrow(0, 0, batch), guided ? logits.narrow(0, batch, batch) : torch::Tensor(),
                            o, ids, step);
    tokens_lb.index_copy_(0, step, next.unsqueeze(0));
    in.narrow(0, 0, batch).copy_(next);
    if (guided) in.narrow(0, batch, batch).copy_(next);
    step.add_(1);
    position.add_(1);
  };
  // Capture runs on a side stream that is ordered after everything queued so far. One per thread
  // and device for all calls: the caching allocator reuses freed blocks only on their own
  // stream, and two threads must not capture on the same stream.
  thread_local std::vector<std::optional<c10::cuda::CUDAStream>> sides;
  if (static_cast<int64_t>(sides.size()) <= dev.index()) sides.resize(dev.index() + 1);
  auto& slot = sides[dev.index()];
  if (!slot) slot = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, dev.index());
  const auto side = *slot;
  auto current = c10::cuda::getCurrentCUDAStream(dev.index());
  at::cuda::CUDAEvent ready;
  ready.record(current);
  ready.block(side);
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStreamGuard on_side(side);
    body();  // token `first`, eagerly
    capture_graph(graph, body);  // recorded, not run
    for (int64_t t = first + 1; t < len; ++t) graph.replay();
    // The graph's memory pool goes back to the allocator when `graph` is destroyed: only after
    // the replays are done with it.
    side.synchronize();
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(current);
}
#endif

}  // namespace

torch::Tensor generate_tokens(AimModel& model, const torch::Tensor& labels,
                              const std::vector<int64_t>& sample_ids, const SamplingOptions& o,
                              bool* used_graph, const torch::Tensor& prompt) {
  o.validate();
  const int64_t batch = labels.size(0), len = model->config.num_tokens;
  AIM_CHECK(static_cast<int64_t>(sample_ids.size()) == batch, "generate: ", sample_ids.size(),
            " sample ids for ", batch, " labels");
  const int64_t given = prompt.defined() ? prompt.size(1) : 0;
  if (prompt.defined()) {
    AIM_CHECK(prompt.dim() == 2 && prompt.size(0) == batch, "generate: the prompt must be [", batch,
              ", P] tokens, found ", prompt.sizes());
    AIM_CHECK(given >= 1 && given < len, "generate: a prompt of ", given, " tokens; expected 1 to ", len - 1,
              " of the ", len, " image tokens");
    AIM_CHECK(prompt.min().item<int64_t>() >= 0 && prompt.max().item<int64_t>() < model->config.vocab_size,
              "generate: prompt tokens outside the vocabulary [0, ", model->config.vocab_size, ")");
  }
  torch::NoGradGuard no_grad;
  const bool guided = o.cfg != 1.0;
  const auto device = model->backbone->norm_f->weight.device();
  auto lab = labels.to(device, torch::kLong);
  auto state = model->start(guided ? torch::cat({lab, torch::full_like(lab, model->null_class())}) : lab,
                            torch::kFloat, o.ssm_state_dtype);
  const auto ids = torch::tensor(sample_ids, torch::kLong).to(device);
  auto tokens = torch::empty({batch, len}, torch::dtype(torch::kLong).device(device));
  // Token `given` from the class slot (no prompt), or from one parallel pass over the class slot
  // and the prompt (the scan kernels' prefill, leaving the recurrent state after the prompt).
  // Both halves of a guided batch see the same prompt. Guidance in fp32, filters and the draw
  // keyed by (seed, sample, t): one kernel on CUDA. A token depends on the (seed, sample, t) of
  // its draw and the tokens before it, not on how they were given.
  torch::Tensor logits;
  if (given > 0) {
    const auto p = prompt.to(device, torch::kLong);
    tokens.narrow(1, 0, given).copy_(p);
    logits = model->prefill(state, guided ? torch::cat({p, p}) : p);
  } else {
    logits = model->step(state, torch::Tensor());
  }
  auto uncond = [&](const torch::Tensor& l) { return guided ? l.narrow(0, batch, batch) : torch::Tensor(); };
  torch::Tensor prev = next_tokens(logits.narrow(0, 0, batch), uncond(logits), o, ids, given);
  tokens.select(1, given).copy_(prev);
  const int64_t first = given + 1;  // the first token stepped after the one just drawn
  bool graphed = false;
#ifdef AIM_WITH_CUDA
  graphed = o.cuda_graph && device.is_cuda() && len > first + 1 &&
            ops::sample_tokens_keyed_fused(logits.narrow(0, 0, batch),
                                           o.cfg_top_p < 1.0 ? torch::Tensor() : uncond(logits),
                                           o.temperature, o.top_k, o.top_p);
  if (graphed) {
    AIM_CHECK(len - 2 + model->config.decode_position_offset <= model->config.num_tokens,
              "generate: decode_position_offset ", model->config.decode_position_offset,
              " puts the last token beyond the position table");
    auto tokens_lb = tokens.t().contiguous();  // [L, B]: the graph writes row `step`
    auto in = guided ? torch::cat({prev, prev}) : prev.clone();  // static input of the graph
    replay_tokens(model, state, ids, o, tokens_lb, in, batch, guided, first);
    if (used_graph) *used_graph = true;
    return tokens_lb.t().contiguous().to(torch::kCPU);
  }
#endif
  if (used_graph) *used_graph = graphed;
  for (int64_t t = first; t < len; ++t) {
    auto in = guided ? torch::cat({prev, prev}) : prev;  // both halves get the same token
    logits = model->step(state, in);
    prev = next_tokens(logits.narrow(0, 0, batch), uncond(logits), o, ids, t);
    tokens.select(1, t).copy_(prev);
  }
  return tokens.to(torch::kCPU);
}

void prepare_vq_for_decoding(VqModel& vq, torch::Device device, torch::ScalarType dtype) {
  AIM_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16,
            "--vq-dtype: expected fp32 or bf16, found ", c10::toString(dtype));
  vq->to(device, dtype);
  if (!device.is_cuda()) return;
  torch::NoGradGuard no_grad;
  for (auto& p : vq->parameters())
    if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
}

torch::Tensor decode_tokens(VqModel& vq, const torch::Tensor& tokens, int64_t batch) {
  AIM_CHECK(tokens.dim() == 2, "decode: tokens must be [N, L], got ", tokens.sizes());
  AIM_CHECK(tokens.numel() == 0 || (tokens.min().item<int64_t>() >= 0 &&
                                    tokens.max().item<int64_t>() < vq->config.codebook_size),
            "decode: tokens outside the codebook [0, ", vq->config.codebook_size, ")");
  const int64_t side = VqModel::Impl::side_of(tokens.size(1));
  const auto device = vq->post_quant_conv->weight.device();
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out;
  for (int64_t s = 0; s < tokens.size(0); s += batch) {
    const int64_t n = std::min(batch, tokens.size(0) - s);
    out.push_back(vq->decode(tokens.narrow(0, s, n).to(device), side, side).to(torch::kCPU, torch::kFloat));
  }
  return out.empty() ? torch::empty({0, 3, side * vq->config.downsample(), side * vq->config.downsample()})
                     : torch::cat(out);
}

}  // namespace aim
