#include "train_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <sstream>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/safetensors.h"
#include "aim/data/sampler.h"

namespace aim::train {

namespace fs = std::filesystem;

// ------------------------------------------------------------------------------------ signals

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
volatile std::sig_atomic_t g_stderr_is_tty = 0;  // read once, outside the handler

void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {  // second signal: stop now
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
  // Only to a terminal: a pipe (mpirun reading the ranks' output, a log collector) can be full,
  // and a write blocked in the handler would hold the rank until it is killed. stop_before_step()
  // says it otherwise, once the step is done.
  if (g_stderr_is_tty != 0) {
    const char msg[] = "\naim: stop requested; finishing the current step (or the FID's batch) and "
                       "saving (signal again to abort)\n";
    [[maybe_unused]] auto n = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
  }
}

}  // namespace

int stop_signal() { return static_cast<int>(g_stop_signal); }

void install_stop_handlers() {
  g_stderr_is_tty = ::isatty(STDERR_FILENO) == 1 ? 1 : 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  // SIGUSR1/SIGUSR2 too: Open MPI's mpirun forwards them to the ranks at once (SIGINT/SIGTERM it
  // turns into SIGTERM, then SIGKILL one second later, too soon to save a large model), and
  // batch systems send them ahead of a time limit (sbatch --signal=B:USR1@600).
  for (const int sig : {SIGINT, SIGTERM, SIGUSR1, SIGUSR2}) sigaction(sig, &sa, nullptr);
  // A write beyond a file-size limit must fail with an error (reported as a failed save), not
  // kill the process.
  std::signal(SIGXFSZ, SIG_IGN);
}

// ------------------------------------------------------------------------------------ the loop

uint64_t micro_seed(int64_t seed, int64_t step, int64_t micro, int64_t rank) {
  uint64_t h = splitmix64(static_cast<uint64_t>(seed) ^ 0x7472616e2d61696dULL);
  h = splitmix64(h ^ static_cast<uint64_t>(step));
  h = splitmix64(h ^ static_cast<uint64_t>(micro));
  h = splitmix64(h ^ static_cast<uint64_t>(rank));
  return h >> 1;  // torch seeds are taken as uint64 but kept positive for readability
}

std::string resume_dir_for(const std::string& resume, const std::string& out_dir) {
  if (resume == "auto") return fs::exists(fs::path(out_dir) / "latest") ? resolve_resume_dir(out_dir) : "";
  return resume.empty() ? "" : resolve_resume_dir(resume);
}

void report_changed_settings(const Config& saved, const Config& now, const std::string& resume_dir,
                             const std::function<void(const std::string&)>& say) {
  const auto changes = config_changes(saved, now);
  if (changes.empty()) return;
  std::string list;
  for (const auto& c : changes) list += (list.empty() ? "" : "; ") + c;
  say(str_cat("warning: resuming from ", resume_dir, " with ", changes.size(), " setting",
              changes.size() == 1 ? "" : "s", " changed since it was written: ", list));
}

std::string section_changes(const Config& saved, const Config& now, const std::string& prefix) {
  std::string list;
  for (const auto& c : config_changes(saved, now))
    if (c.rfind(prefix, 0) == 0) list += (list.empty() ? "" : "; ") + c;
  return list.empty() ? "(a setting outside the listed keys)" : list;
}

int64_t accumulation_steps(const TrainConfig& train, int64_t world) {
  const int64_t micro = train.micro_batch, global = train.global_batch;
  if (global % (micro * world) != 0) {
    // A hint that itself works: the largest micro-batch up to this one that divides each rank's
    // share, or, where the ranks cannot share the batch evenly, the nearest global batch that fits.
    std::string hint;
    if (global % world == 0) {
      int64_t m = std::min(micro, global / world);
      while (m > 1 && (global / world) % m != 0) --m;
      hint = str_cat("--set train.micro_batch=", m, " (", global / world / m, " micro-batches per step on each rank)");
    } else {
      const int64_t unit = micro * world;
      const int64_t nearest = std::max<int64_t>(1, (global + unit / 2) / unit) * unit;
      hint = str_cat(world, " ranks cannot share ", global, " images evenly: --set train.global_batch=", nearest,
                     " (the peak learning rate follows it unless optim.lr is set), or a number of ranks that divides ", global);
    }
    throw Error(str_cat("train.global_batch ", global, " must be a multiple of train.micro_batch (", micro,
                        ") x ranks (", world, ")\n---> HINT: ", hint));
  }
  return global / (micro * world);
}

void check_optimizer_steps(int64_t optimizer_steps, const TrainerState& state, const std::string& path) {
  const int64_t expected = state.step - state.skipped_steps;
  AIM_CHECK(optimizer_steps == expected,
            str_cat(path, ": optimizer at step ", optimizer_steps, ", but trainer_state.json is at step ", state.step,
                    state.skipped_steps > 0 ? str_cat(" with ", state.skipped_steps, " skipped") : std::string(),
                    " (expected ", expected, " optimizer steps)"));
}

void continue_data_position(TrainerState& state, int64_t num_samples, int64_t micro, int64_t world,
                            const Say& say) {
  if (state.step == 0) return;
  if (state.data_samples > 0 && state.data_samples != num_samples)
    say(str_cat("warning: the checkpoint's run trained on ", state.data_samples, " images, the data now holds ",
                num_samples, ": epoch ", state.epoch, " goes on in another order, at the same position"));
  if (state.micro_batch <= 0) return;
  if (state.micro_batch == micro && state.world_size == world) return;
  const int64_t used = state.batch * state.micro_batch * state.world_size;
  const int64_t per_batch = micro * world;
  const int64_t batch = (used + per_batch - 1) / per_batch;
  const int64_t skipped = batch * per_batch - used;
  say(str_cat("data: the checkpoint was written by ", state.world_size, " rank(s) x micro-batch ", state.micro_batch,
              ", this run has ", world, " x ", micro, "; epoch ", state.epoch, " goes on after its first ", used,
              " samples (micro-batch ", batch, " of each rank)",
              skipped > 0 ? str_cat(", skipping ", skipped, " to reach a whole micro-batch of every rank")
                          : std::string(", as an uninterrupted run would")));
  state.batch = batch;
}

std::vector<torch::Tensor> tensors_of(const std::vector<NamedParam>& params) {
  std::vector<torch::Tensor> t;
  t.reserve(params.size());
  for (const auto& p : params) t.push_back(p.tensor);
  return t;
}

bool stop_before_step(DistContext& dist, const TrainOptions& options, int64_t session_steps,
                      TrainResult& result) {
  if (dist.any_true(stop_signal() != 0)) {
    result.interrupted = true;
    if (dist.is_main())
      std::cerr << "[train] stop requested (" << (stop_signal() ? strsignal(stop_signal()) : "on another rank")
                << "): saving a checkpoint, then exiting\n";
    return true;
  }
  if (options.stop_after > 0 && session_steps >= options.stop_after) {
    result.paused = true;
    return true;
  }
  return false;
}

bool skip_nonfinite_step(double loss, double grad_norm, double lr, const TrainConfig& train,
                         const RunDir& run, TrainerState& state, const Say& say) {
  if (std::isfinite(loss) && std::isfinite(grad_norm)) return false;
  const std::string what = str_cat("step ", state.step + 1, ": non-finite ",
                                   !std::isfinite(loss) ? "loss" : "gradient norm", " (loss ", loss,
                                   ", grad norm ", grad_norm, ", lr ", lr, ")");
  if (!train.skip_nonfinite) {
    const auto l = run.latest();
    throw Error(str_cat(what, "; stopping without saving. ",
                        l ? str_cat("The last good checkpoint is ", *l) : std::string("No checkpoint was written yet"),
                        "\n---> HINT: lower optim.lr, raise schedule.warmup_steps, or set "
                        "train.skip_nonfinite=true to skip such steps"));
  }
  say(what + "; step skipped (train.skip_nonfinite)");
  ++state.skipped_steps;
  return true;
}

std::string save_checkpoint(DistContext& dist, RunDir& run, const Config& config, const TrainerState& state,
                            const std::vector<torch::Tensor>& params,
                            const std::function<void(const std::string& dir)>& write_model_files, const Say& say,
                            ConfigUse use) {
  const int64_t world = dist.world_size();
  if (world > 1) {
    // Data-parallel replicas must hold the same weights; a divergence is a bug worth stopping for.
    const auto check = dist.compare_with_root(params);
    if (!check.identical())
      throw Error(str_cat("step ", state.step, ": parameters differ between ranks (", check.mismatched,
                          " elements, max |diff| ", check.max_abs_diff, "); not saving"));
    say(str_cat("replicas: parameters identical on all ", world, " ranks at step ", state.step));
  }
  std::string checkpoint, error;
  if (dist.is_main()) {
    try {
      checkpoint = run.save(
          state.step,
          [&](const std::string& dir) {
            write_text_atomic((fs::path(dir) / "config.yaml").string(), config_to_yaml(config, use));
            write_model_files(dir);
            write_text_atomic((fs::path(dir) / "trainer_state.json").string(), state.to_json());
          },
          config.train.keep_last);
      say(str_cat("checkpoint: ", checkpoint));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  if (dist.any_true(!error.empty()))
    throw Error(dist.is_main() ? error : "rank 0 failed to save a checkpoint; see its message");
  return checkpoint;
}

void end_session(DistContext& dist, const RunDir& run, const TrainerState& state, Progress& progress,
                 const Say& say, TrainResult& result) {
  if (result.interrupted || result.paused) {
    say(str_cat("stopped at step ", state.step, " of ", result.total_steps, "; resume with --resume ", run.path()));
  } else {
    progress.finish(str_cat("loss ", fmt(state.loss)));
  }
  dist.barrier();
  result.steps = state.step;
  result.loss = state.loss;
  if (result.checkpoint.empty()) {
    const auto l = run.latest();
    if (l) result.checkpoint = *l;
  }
}

void agree_on_resume(DistContext& dist, const std::function<void()>& read, const std::string& resume_dir,
                     const int64_t& step) {
  if (dist.world_size() == 1) return read();
  std::exception_ptr failure;
  try {
    read();
  } catch (...) {
    failure = std::current_exception();
  }
  constexpr double kFailed = -2.0, kNew = -1.0;
  const double mine = failure ? kFailed : resume_dir.empty() ? kNew : static_cast<double>(step);
  const double lo = dist.all_reduce(mine, ReduceOp::kMin), hi = dist.all_reduce(mine, ReduceOp::kMax);
  if (failure) std::rethrow_exception(failure);
  if (lo == kFailed)
    throw Error(str_cat("resume: another rank could not read its checkpoint (its error is in its output); rank ",
                        dist.rank(), " found ", resume_dir.empty() ? std::string("none") : resume_dir));
  if (lo == hi) return;
  auto what = [](double s) { return s < 0 ? std::string("no checkpoint (a new run)") : str_cat("step ", static_cast<int64_t>(s)); };
  throw Error(str_cat("resume: the ranks found different checkpoints (from ", what(lo), " to ", what(hi), "); rank ",
                      dist.rank(), " found ", resume_dir.empty() ? std::string("none") : resume_dir, " (", what(mine),
                      ")\n---> HINT: every rank must see the same train.out_dir (a shared filesystem, written "
                      "before this job started), or pass --resume DIR explicitly"));
}

void on_every_rank_or_none(DistContext& dist, const std::function<void()>& f, const std::string& what) {
  if (dist.world_size() == 1) return f();
  std::exception_ptr failure;
  try {
    f();
  } catch (...) {
    failure = std::current_exception();
  }
  const bool any = dist.any_true(static_cast<bool>(failure));
  if (failure) std::rethrow_exception(failure);
  if (any)
    throw Error(str_cat(what, ": failed on another rank (its error is in its output); rank ", dist.rank(),
                        " stops with it"));
}

void agree_on_count(DistContext& dist, int64_t count, const std::string& what) {
  if (dist.world_size() == 1) return;
  const auto mine = static_cast<double>(count);
  const double lo = dist.all_reduce(mine, ReduceOp::kMin), hi = dist.all_reduce(mine, ReduceOp::kMax);
  if (lo == hi) return;
  throw Error(str_cat(what, ": the ranks do not see the same number of images (", static_cast<int64_t>(lo), " to ",
                      static_cast<int64_t>(hi), "; rank ", dist.rank(), " sees ", count, ")\n---> HINT: a copy on "
                      "one node differs from the others' (an unfinished copy to a node-local disk?)"));
}

void refuse_existing_run(DistContext& dist, const std::string& out_dir, const std::string& resume_dir) {
  std::string latest;
  if (dist.is_main()) {
    std::error_code ec;
    const std::string own = resume_dir.empty() ? "" : run_dir_of(resume_dir);
    const bool same_run = !own.empty() && fs::exists(out_dir, ec) && fs::equivalent(own, out_dir, ec);
    if (!same_run && fs::exists(fs::path(out_dir) / "latest", ec)) {
      try {
        const auto l = RunDir(out_dir).latest();
        latest = l ? *l : "";
      } catch (const std::exception&) {
        latest = (fs::path(out_dir) / "latest").string() + " (unreadable)";
      }
    }
  }
  if (!dist.any_true(!latest.empty())) return;
  const std::string held = str_cat("train.out_dir ", out_dir, ": already holds a run",
                                   latest.empty() ? "" : " (latest checkpoint ", latest, latest.empty() ? "" : ")");
  if (!resume_dir.empty())
    throw Error(str_cat(held, "; resuming ", resume_dir, " there would replace its checkpoints\n---> HINT: leave out "
                        "--out to go on in the run resumed from, or give --out a new folder"));
  throw Error(str_cat(held, "; a new run there would replace its checkpoints\n"
                      "---> HINT: --resume ", out_dir, " to continue it, --out DIR for a new run, or remove it"));
}

void report_later_checkpoints(const RunDir& run, int64_t step, const Say& say) {
  std::string later;
  int64_t n = 0;
  for (int64_t s : run.checkpoint_steps()) {
    if (s <= step) continue;
    later += str_cat(n++ == 0 ? "" : ", ", s);
  }
  if (n == 0) return;
  say(str_cat("note: ", run.path(), " holds ", n, " checkpoint(s) past step ", step, " (step ", later,
              ") from the run's earlier course; train.keep_last prunes them first"));
}

namespace {

/// Seconds since the epoch of a file's last change (0 when it cannot be read).
double file_mtime(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0.0;
  return static_cast<double>(st.st_mtim.tv_sec) + 1e-9 * static_cast<double>(st.st_mtim.tv_nsec);
}

/// The step of samples/step-NNNNNNNN.png, or -1 for another name.
int64_t step_of_image(const std::string& name) {
  if (name.size() != 17 || name.rfind("step-", 0) != 0 || name.substr(13) != ".png") return -1;
  int64_t step = 0;
  for (size_t i = 5; i < 13; ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

}  // namespace

MetricsLog::MetricsLog(const RunDir& run, bool main, int64_t start_step, bool tensorboard, std::string image_tag,
                       bool fid_due)
    : image_tag_(std::move(image_tag)) {
  if (!main) return;
  const fs::path path = fs::path(run.path()) / "metrics.jsonl";
  std::error_code ec;
  std::string kept, moved;
  std::vector<nlohmann::ordered_json> kept_records;  // for the TensorBoard events, below
  // The time of records written before they carried one (before the file is rewritten below).
  const double log_time = file_mtime(path.string());
  if (fs::exists(path, ec)) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      int64_t step = -1;
      bool fid = false;
      nlohmann::ordered_json j;
      try {
        j = nlohmann::ordered_json::parse(line);
        if (j.contains("step") && j["step"].is_number_integer()) step = j["step"].get<int64_t>();
        fid = j.is_object() && j.value("kind", "") == "fid";
      } catch (const std::exception&) {
        // A line cut short by a crash: dropped with the steps after it.
        step = std::numeric_limits<int64_t>::max();
      }
      // (A due FID written by a session that ended before its next checkpoint is written again.)
      if (step > start_step || (fid_due && fid && step == start_step)) {
        moved += line + "\n";
      } else {
        kept += line + "\n";
        kept_records.push_back(std::move(j));
      }
    }
    if (!moved.empty()) {
      const std::string aside = str_cat((fs::path(run.path()) / "metrics.after-step-").string(), start_step, ".jsonl");
      if (fs::exists(aside, ec)) moved = read_text(aside) + moved;
      write_text_atomic(aside, moved);
      write_text_atomic(path.string(), kept);
    }
  }
  path_ = path.string();
  out_.open(path_, std::ios::app);

  // The step pictures past start_step belong to the same earlier course: aside too.
  const fs::path samples = fs::path(run.path()) / "samples";
  std::vector<std::pair<int64_t, fs::path>> pictures, later;
  for (const auto& e : fs::directory_iterator(samples, ec)) {
    const int64_t s = step_of_image(e.path().filename().string());
    if (s >= 0 && e.is_regular_file(ec)) (s <= start_step ? pictures : later).emplace_back(s, e.path());
  }
  if (!later.empty()) {
    const fs::path aside = samples / str_cat("after-step-", start_step);
    fs::create_directories(aside, ec);
    for (const auto& [s, p] : later) {
      fs::rename(p, aside / p.filename(), ec);
      if (ec) throw Error(str_cat(p.string(), ": cannot move it to ", aside.string(), ": ", ec.message()));
    }
  }
  // Every session writes the events afresh: the records that stay, the step pictures up to
  // start_step, then its own. Whatever the earlier sessions left (steps of an abandoned course, a
  // picture drawn after the last record before a crash, a gap from a full disk or a session with
  // the events off) is then not shown, and no TensorBoard loader has to purge it.
  const fs::path tb_dir = fs::path(run.path()) / "tensorboard";
  auto remove_earlier_events = [&] {
    std::vector<fs::path> earlier;
    for (const auto& e : fs::directory_iterator(tb_dir, ec))
      if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) earlier.push_back(e.path());
    for (const auto& e : earlier) fs::remove(e);
  };
  if (!tensorboard) {
    // With the events off this session, those of the course just moved aside would still show it.
    if (!moved.empty() || !later.empty()) {
      try {
        remove_earlier_events();
      } catch (const std::exception& e) {
        warn_tensorboard(str_cat(e.what(), " (events of steps past ", start_step, " remain)"));
      }
    }
    return;
  }
  try {
    remove_earlier_events();
    tb_ = std::make_unique<TensorBoardWriter>(tb_dir.string());
    for (const auto& record : kept_records) tensorboard_record(record, log_time);
    std::sort(pictures.begin(), pictures.end());
    for (const auto& [s, p] : pictures) {
      try {
        tb_->image(image_tag_, s, read_text(p.string()), file_mtime(p.string()));
      } catch (const Error& e) {
        warn_tensorboard(str_cat(p.string(), ": ", e.what()));
      }
    }
    if (!tb_->flush()) warn_tensorboard("writing " + tb_->path() + " failed (disk full?)");
  } catch (const std::exception& e) {
    warn_tensorboard(e.what());
    tb_.reset();
  }
}

void MetricsLog::warn_tensorboard(const std::string& what) {
  if (tb_failed_) return;
  tb_failed_ = true;
  std::cerr << "warning: TensorBoard events: " << what << "; training and metrics.jsonl go on\n";
}

void MetricsLog::tensorboard_record(const nlohmann::ordered_json& record, double fallback_time) {
  if (!tb_ || !record.is_object() || !record.contains("step") || !record["step"].is_number_integer()) return;
  const int64_t step = record["step"].get<int64_t>();
  const std::string kind = record.value("kind", "train");
  const double time =
      record.contains("time") && record["time"].is_number() ? record["time"].get<double>() : fallback_time;
  for (const auto& [key, value] : record.items()) {
    // (Not NaN or inf: metrics.jsonl stores them as null, and a later session's events, written
    // from it, would not have them.)
    if (key == "step" || key == "time" || !value.is_number() || !std::isfinite(value.get<double>())) continue;
    tb_->scalar(str_cat(kind, "/", key), step, value.get<double>(), time);
  }
}

void MetricsLog::write(const nlohmann::ordered_json& record) {
  if (!out_.is_open()) return;
  nlohmann::ordered_json r = record;
  if (!r.contains("time")) r["time"] = TensorBoardWriter::now();
  out_ << r.dump() << "\n";
  out_.flush();
  if (!out_ && !failed_) {
    // Training goes on (its checkpoints say whether the disk has room); the log says once.
    failed_ = true;
    std::cerr << "warning: writing " << path_ << " failed (disk full?): later metrics lines may be missing\n";
  }
  if (!out_) out_.clear();
  if (tb_) {
    tensorboard_record(r, r["time"].get<double>());
    if (!tb_->flush()) warn_tensorboard("writing " + tb_->path() + " failed (disk full?)");
  }
}

void MetricsLog::image(int64_t step, const std::string& png) {
  if (!tb_) return;
  try {
    tb_->image(image_tag_, step, read_text(png), TensorBoardWriter::now());
  } catch (const Error& e) {
    warn_tensorboard(str_cat(png, ": ", e.what()));
  }
  if (!tb_->flush()) warn_tensorboard("writing " + tb_->path() + " failed (disk full?)");
}

std::string step_image_path(const RunDir& run, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "step-%08lld.png", static_cast<long long>(step));
  const fs::path dir = fs::path(run.path()) / "samples";
  std::error_code ec;  // (a folder that cannot be made shows as the picture's write error)
  fs::create_directories(dir, ec);
  return (dir / name).string();
}

// ------------------------------------------------------------------------------------ formatting

std::string fmt(double v, int precision) {
  std::ostringstream s;
  s << std::setprecision(precision) << v;
  return s.str();
}

std::string fmt_count(double v) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1);
  if (v >= 1e6) s << v / 1e6 << "M";
  else if (v >= 1e3) s << v / 1e3 << "k";
  else s << std::setprecision(0) << v;
  return s.str();
}

}  // namespace aim::train
