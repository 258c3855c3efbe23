#include "aim/train/run_dir.h"

#include <fcntl.h>
#include <stdio.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "aim/core/error.h"
#include "aim/core/fileio.h"

namespace aim::train {

namespace fs = std::filesystem;

std::string TrainerState::to_json() const {
  nlohmann::ordered_json j;
  j["step"] = step;
  j["epoch"] = epoch;
  j["batch"] = batch;
  j["samples_seen"] = samples_seen;
  j["world_size"] = world_size;
  j["global_batch"] = global_batch;
  j["micro_batch"] = micro_batch;
  j["seed"] = seed;
  j["skipped_steps"] = skipped_steps;
  j["data_samples"] = data_samples;
  j["log_sums"] = log_sums;
  j["log_count"] = log_count;
  j["elapsed_s"] = elapsed_s;
  j["loss"] = loss;
  if (fid_due) j["fid_due"] = true;
  j["rng"] = rng;
  return j.dump(2) + "\n";
}

TrainerState TrainerState::from_json(const std::string& text, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw Error(str_cat(what, ": not valid JSON: ", e.what()));
  }
  AIM_CHECK(j.is_object(), str_cat(what, ": expected a JSON object"));
  TrainerState s;
  auto get_int = [&](const char* key, int64_t& out) {
    AIM_CHECK(j.contains(key) && j[key].is_number_integer() && j[key].get<int64_t>() >= 0,
              str_cat(what, ": key '", key, "': expected an integer >= 0, found ",
                      j.contains(key) ? j[key].dump() : std::string("nothing")));
    out = j[key].get<int64_t>();
  };
  get_int("step", s.step);
  get_int("epoch", s.epoch);
  get_int("batch", s.batch);
  get_int("samples_seen", s.samples_seen);
  get_int("world_size", s.world_size);
  get_int("global_batch", s.global_batch);
  get_int("micro_batch", s.micro_batch);
  get_int("seed", s.seed);
  if (j.contains("skipped_steps")) get_int("skipped_steps", s.skipped_steps);
  if (j.contains("data_samples")) get_int("data_samples", s.data_samples);
  if (j.contains("log_count")) get_int("log_count", s.log_count);
  if (j.contains("log_sums")) {
    AIM_CHECK(j["log_sums"].is_array(), what, ": key 'log_sums': expected an array of numbers, found ",
              j["log_sums"].dump());
    for (const auto& v : j["log_sums"]) {
      AIM_CHECK(v.is_number(), what, ": key 'log_sums': expected numbers, found ", v.dump());
      s.log_sums.push_back(v.get<double>());
    }
  }
  if (j.contains("elapsed_s") && j["elapsed_s"].is_number()) s.elapsed_s = j["elapsed_s"].get<double>();
  if (j.contains("loss") && j["loss"].is_number()) s.loss = j["loss"].get<double>();
  if (j.contains("rng") && j["rng"].is_string()) s.rng = j["rng"].get<std::string>();
  if (j.contains("fid_due")) {
    AIM_CHECK(j["fid_due"].is_boolean(), what, ": key 'fid_due': expected true or false, found ", j["fid_due"].dump());
    s.fid_due = j["fid_due"].get<bool>();
  }
  return s;
}

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::optional<int64_t> parse_step_name(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() <= 5) return std::nullopt;
  const std::string digits = name.substr(5);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(digits);
}

}  // namespace

RunDir::RunDir(std::string path) : path_(std::move(path)) {
  std::error_code ec;
  fs::create_directories(fs::path(path_) / "checkpoints", ec);
  AIM_CHECK(!ec, str_cat(path_, ": cannot create the run directory: ", ec.message()));
}

std::optional<std::string> RunDir::latest() const {
  const fs::path pointer = fs::path(path_) / "latest";
  std::error_code ec;
  if (!fs::exists(pointer, ec)) return std::nullopt;
  std::string rel = read_text(pointer.string());
  while (!rel.empty() && (rel.back() == '\n' || rel.back() == ' ')) rel.pop_back();
  const fs::path dir = fs::path(path_) / rel;
  AIM_CHECK(fs::exists(dir / "trainer_state.json", ec),
            str_cat(pointer.string(), " names ", rel, ", which holds no trainer_state.json"));
  return dir.string();
}

std::vector<int64_t> RunDir::checkpoint_steps() const {
  std::vector<int64_t> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(path_) / "checkpoints", ec)) {
    if (!e.is_directory()) continue;
    const auto step = parse_step_name(e.path().filename().string());
    if (step && fs::exists(e.path() / "trainer_state.json")) out.push_back(*step);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string RunDir::save(int64_t step, const std::function<void(const std::string& dir)>& write,
                         int64_t keep_last) {
  const fs::path ckpts = fs::path(path_) / "checkpoints";
  const std::string name = step_name(step);
  const fs::path final_dir = ckpts / name;
  const fs::path tmp_dir = ckpts / ("." + name + ".partial");
  std::error_code ec;
  // What an interrupted save left (any step's), then this save's own.
  for (const auto& e : fs::directory_iterator(ckpts, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 8 && n[0] == '.' && n.compare(n.size() - 8, 8, ".partial") == 0) fs::remove_all(e.path(), ec);
  }
  fs::remove_all(tmp_dir, ec);
  auto previous = [&]() -> std::string {
    try {
      const auto l = latest();
      return l ? str_cat("the previous checkpoint ", *l, " is intact") : "no earlier checkpoint exists";
    } catch (const std::exception&) {
      return "no readable earlier checkpoint";
    }
  };
  try {
    fs::create_directories(tmp_dir, ec);
    AIM_CHECK(!ec, str_cat(tmp_dir.string(), ": cannot create: ", ec.message()));
    write(tmp_dir.string());
    sync_directory(tmp_dir.string());
    if (fs::exists(final_dir)) {
      // Saving the same step again (a resumed run that stops where it started): one atomic
      // exchange, so `latest` never names a missing directory; two renames where the file
      // system cannot exchange.
      if (::renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
        fs::remove_all(tmp_dir, ec);
      } else {
        const fs::path old_dir = ckpts / ("." + name + ".old");
        fs::remove_all(old_dir, ec);
        fs::rename(final_dir, old_dir);
        fs::rename(tmp_dir, final_dir);
        fs::remove_all(old_dir, ec);
      }
    } else {
      fs::rename(tmp_dir, final_dir);
    }
    sync_directory(ckpts.string());
    write_text_atomic((fs::path(path_) / "latest").string(), "checkpoints/" + name + "\n");
    sync_directory(path_);
  } catch (const std::exception& e) {
    fs::remove_all(tmp_dir, ec);
    throw Error(str_cat("saving the checkpoint of step ", step, " to ", final_dir.string(),
                        " failed: ", e.what(), "\n---> ", previous()));
  }
  // Keep the newest keep_last of this run's course: checkpoints past `step` were left behind by
  // a resume from an earlier one, so they go first.
  auto steps = checkpoint_steps();
  const auto first_kept = std::stable_partition(steps.begin(), steps.end(), [&](int64_t s) { return s > step; });
  std::sort(first_kept, steps.end());
  if (static_cast<int64_t>(steps.size()) > keep_last) {
    for (size_t i = 0; i + keep_last < steps.size(); ++i) {
      if (steps[i] == step) continue;
      fs::remove_all(ckpts / step_name(steps[i]), ec);
    }
  }
  return final_dir.string();
}

std::string run_dir_of(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (fs::exists(p / "latest", ec) || fs::is_directory(p / "checkpoints", ec)) return p.string();
  if (p.parent_path().filename() == "checkpoints") return p.parent_path().parent_path().string();
  return "";
}

std::string resolve_resume_dir(const std::string& path) {
  std::error_code ec;
  AIM_CHECK(fs::exists(path, ec), str_cat("--resume ", path, ": no such directory"));
  if (fs::exists(fs::path(path) / "trainer_state.json", ec)) return path;
  if (fs::exists(fs::path(path) / "latest", ec)) {
    RunDir dir(path);
    const auto l = dir.latest();
    if (l) return *l;
  }
  throw Error(str_cat("--resume ", path, ": neither a checkpoint (trainer_state.json) nor a run "
                      "directory with a 'latest' checkpoint"));
}

}  // namespace aim::train
