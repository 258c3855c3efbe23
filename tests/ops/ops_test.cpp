// Causal conv1d, Mamba1 selective scan and the norms: each op against an independent plain
// computation (explicit loops or formulas in fp64), the one-token forms against the parallel
// forms, on every device and dtype.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/conv1d.h"
#include "aim/ops/norms.h"
#include "aim/ops/selective_scan.h"
#include "aim/ops/ssd_scan.h"
#include "test_util.h"

namespace aim {
namespace {

using test::DeviceDtype;

class OpsTest : public ::testing::TestWithParam<DeviceDtype> {
 protected:
  void SetUp() override {
    AIM_SKIP_WITHOUT_DEVICE(GetParam().device);
    torch::manual_seed(11);
  }
  torch::Tensor rnd(torch::IntArrayRef shape, double scale = 1.0) {
    return test::randn(shape, GetParam().dtype, GetParam().device, scale);
  }
  void close(const std::string& name, const torch::Tensor& a, const torch::Tensor& b) {
    const auto tol = test::tolerance_for(GetParam().dtype);
    test::expect_close(name, a, b, tol.atol, false, tol.rtol);
  }
};

TEST_P(OpsTest, CausalConv1dMatchesLoopsAndSteps) {
  for (int64_t width : {2, 3, 4}) {
    for (int64_t len : {1, 3, 37}) {
      const int64_t b = 2, c = 6;
      auto x = rnd({b, c, len}), w = rnd({c, 1, width}, 0.5), bias = rnd({c}, 0.1);
      auto [out, state] = ops::causal_conv1d(x, w, bias, true, true);
      auto xd = x.to(torch::kCPU, torch::kFloat64), wd = w.to(torch::kCPU, torch::kFloat64).squeeze(1);
      auto bd = bias.to(torch::kCPU, torch::kFloat64);
      auto expect = torch::zeros({b, c, len}, torch::kFloat64);
      for (int64_t t = 0; t < len; ++t) {
        auto acc = bd.unsqueeze(0).expand({b, c}).clone();
        for (int64_t k = 0; k < width; ++k) {
          const int64_t src = t - (width - 1) + k;
          if (src >= 0) acc += wd.select(1, k).unsqueeze(0) * xd.select(2, src);
        }
        expect.select(2, t).copy_(torch::silu(acc));
      }
      const auto tag = "conv w" + std::to_string(width) + " L" + std::to_string(len);
      close(tag + " out", out, expect);
      // Steps from a zero state reproduce the parallel output and the returned state.
      auto st = torch::zeros({b, c, width}, x.options());
      std::vector<torch::Tensor> ys;
      for (int64_t t = 0; t < len; ++t) ys.push_back(ops::causal_conv1d_update(x.select(2, t), st, w, bias, true));
      close(tag + " steps", torch::stack(ys, 2), out);
      close(tag + " state", st, state);
    }
  }
}

TEST_P(OpsTest, SelectiveScanMatchesLoopsAndSteps) {
  const int64_t b = 2, e = 5, n = 4, len = 19;
  auto u = rnd({b, e, len}), delta = rnd({b, e, len}, 0.5), z = rnd({b, e, len});
  auto A = -torch::empty({e, n}).uniform_(0.5, 4.0).to(u.device());
  auto Bm = rnd({b, n, len}), Cm = rnd({b, n, len});
  auto D = torch::empty({e}).uniform_(0.5, 1.5).to(u.device());
  auto bias = torch::empty({e}).uniform_(-4.0, -1.5).to(u.device());
  auto init = test::randn({b, e, n}, torch::kFloat, u.device());
  auto f = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat64); };
  // Every combination of the optional parts (z gate, D skip, dt bias, softplus, initial state):
  // the kernels take each as its own branch, and their tests trust the reference there.
  for (int mask = 0; mask < 32; ++mask) {
    const bool with_z = mask & 1, with_d = mask & 2, with_bias = mask & 4, softplus = mask & 8, with_init = mask & 16;
    const std::string tag = str_cat("selective_scan", with_z ? " z" : "", with_d ? " D" : "", with_bias ? " bias" : "",
                                     softplus ? " softplus" : "", with_init ? " init" : "");
    // Without softplus dt is taken as it is: positive and small, as softplus would make it.
    const auto dl = softplus ? delta : delta.abs() * 0.2 + 0.01;
    const auto bs = softplus ? bias : bias.abs() * 0.02;
    const torch::Tensor zz = with_z ? z : torch::Tensor(), dd_ = with_d ? D : torch::Tensor();
    const torch::Tensor bb = with_bias ? bs : torch::Tensor(), ii = with_init ? init : torch::Tensor();
    auto r = ops::selective_scan(u, dl, A, Bm, Cm, dd_, zz, bb, softplus, ii, true);
    // Element by element in fp64.
    auto dpre = f(dl) + (with_bias ? f(bs).view({1, -1, 1}) : torch::zeros({1}, torch::kFloat64));
    auto dd = softplus ? torch::softplus(dpre) : dpre;
    auto ud = f(u), Ad = f(A), Bd = f(Bm), Cd = f(Cm), Dd = f(D), zd = f(z);
    auto expect = torch::zeros({b, e, len}, torch::kFloat64);
    auto h = with_init ? f(init).clone() : torch::zeros({b, e, n}, torch::kFloat64);
    for (int64_t t = 0; t < len; ++t) {
      auto dt = dd.select(2, t).unsqueeze(-1);  // [b, e, 1]
      h = torch::exp(dt * Ad) * h + dt * ud.select(2, t).unsqueeze(-1) * Bd.select(2, t).unsqueeze(1);
      auto y = (h * Cd.select(2, t).unsqueeze(1)).sum(-1);
      if (with_d) y = y + Dd * ud.select(2, t);
      if (with_z) y = y * torch::silu(zd.select(2, t));
      expect.select(2, t).copy_(y);
    }
    close(tag + " y", r.y, expect);
    close(tag + " last_state", r.last_state, h);
    auto st = with_init ? init.clone() : torch::zeros({b, e, n}, init.options());
    std::vector<torch::Tensor> ys;
    for (int64_t t = 0; t < len; ++t) {
      ys.push_back(ops::selective_state_update(st, u.select(2, t), dl.select(2, t), A, Bm.select(2, t),
                                               Cm.select(2, t), dd_, with_z ? z.select(2, t) : torch::Tensor(), bb,
                                               softplus));
    }
    close(tag + " state update steps", torch::stack(ys, 2), r.y);
    close(tag + " state update state", st, r.last_state);
  }
}

TEST_P(OpsTest, Norms) {
  auto x = rnd({3, 7, 32}), res = rnd({3, 7, 32});
  auto w = torch::empty({32}).uniform_(0.5, 1.5).to(x.device(), x.scalar_type());
  auto f = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat64); };
  auto rms = [](const torch::Tensor& t) { return t / torch::sqrt(t.pow(2).mean(-1, true) + 1e-5); };
  close("rms_norm", ops::rms_norm(x, w, 1e-5), rms(f(x)) * f(w));
  auto [normed, residual] = ops::add_rms_norm(x, res, w, 1e-5, true);
  EXPECT_EQ(residual.scalar_type(), torch::kFloat);
  close("add_rms_norm residual", residual, f(x) + f(res));
  close("add_rms_norm out", normed, rms(f(x) + f(res)) * f(w));
  auto [n0, r0] = ops::add_rms_norm(x, torch::Tensor(), w, 1e-5, true);
  close("add_rms_norm first block", n0, rms(f(x)) * f(w));
  // Gated group norm, both orders, 4 groups of 8.
  auto z = rnd({3, 7, 32});
  auto grouped = [&](const torch::Tensor& t) { return rms(t.view({3, 7, 4, 8})).view({3, 7, 32}); };
  auto gate = torch::silu(f(z));
  close("gated_rms_norm gate first", ops::gated_rms_norm(x, z, w, 8, 1e-5, false), grouped(f(x) * gate) * f(w));
  close("gated_rms_norm norm first", ops::gated_rms_norm(x, z, w, 8, 1e-5, true), grouped(f(x)) * f(w) * gate);
}

INSTANTIATE_TEST_SUITE_P(Devices, OpsTest, ::testing::ValuesIn(test::device_dtypes()),
                         [](const auto& info) { return test::param_name(info.param); });

TEST(OpsChecks, ShapeErrorsNameTheOp) {
  auto x = torch::randn({2, 4, 5});
  try {
    ops::causal_conv1d(x, torch::randn({3, 4}), {}, true);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("causal_conv1d: weight must be"), std::string::npos) << e.what();
  }
  try {
    ops::ssd_scan(torch::randn({1, 4, 2, 3}), torch::randn({1, 4, 3}), torch::randn({2}),
                  torch::randn({1, 4, 1, 2}), torch::randn({1, 4, 1, 2}), {}, {}, true, 4);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ssd_scan: dt must be"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace aim
