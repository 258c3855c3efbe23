#pragma once
#include <string>

#include "aim/core/checkpoint.h"
#include "aim/model/aim.h"

namespace aim {

/// Builds the model a checkpoint describes and loads its weights (the EMA weights of a run
/// directory when `use_ema` and present). Throws aim::Error naming the file on any mismatch.
AimModel load_aim_model(const CheckpointRef& ref, bool use_ema = false);

/// Writes the model's weights in the official layout to `path` (atomically).
void save_aim_model(const AimModel& model, const std::string& path);

}  // namespace aim
