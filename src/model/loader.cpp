#include "aim/model/loader.h"

#include "aim/core/safetensors.h"

namespace aim {

AimModel load_aim_model(const CheckpointRef& ref, bool use_ema) {
  AimModel model(checkpoint_model_config(ref));
  const std::string weights = use_ema && !ref.ema_path.empty() ? ref.ema_path : ref.weights_path;
  SafetensorsFile file(weights);
  load_official_state_dict(model, file.load_all(), weights);
  model->eval();
  return model;
}

void save_aim_model(const AimModel& model, const std::string& path) {
  save_safetensors(path, official_state_dict(model), {{"format", "pt"}});
}

}  // namespace aim
