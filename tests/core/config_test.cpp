// The configuration system: shipped YAML files, defaults, YAML round trip, --set overrides,
// every validation rule's message (it must name the dotted key and the value found), YAML
// errors, and the official Hugging Face config.json reader on the golden fixtures.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/core/error.h"
#include "test_util.h"

namespace aim {
namespace {

std::string source_path(const std::string& rel) { return test::source_dir() + "/" + rel; }

/// Runs `fn`, expects an aim::Error whose message contains every string of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "':\n  " << msg;
    return;
  }
  ADD_FAILURE() << "no aim::Error thrown; expected one mentioning '" << parts.front() << "'";
}

/// A temp dir private to this process, removed when the process exits.
const std::filesystem::path& temp_dir() {
  struct Dir {
    std::filesystem::path path = std::filesystem::path(testing::TempDir()) / str_cat("aim_config_test_", ::getpid());
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}

/// Writes `text` to a file under `temp_dir()` and returns its path.
std::string write_temp(const std::string& name, const std::string& text) {
  const auto& dir = temp_dir();
  std::filesystem::create_directories(dir);
  const auto path = dir / name;
  std::ofstream(path) << text;
  return path.string();
}

// ------------------------------------------------------------------------------------ files

TEST(Config, ShippedConfigsLoadAndValidate) {
  struct Size {
    const char* file;
    int64_t d_model, n_layer;
    bool group;
    int64_t groups, epochs;
  };
  for (const Size& s : {Size{"aim_b", 768, 24, false, 1, 300}, Size{"aim_l", 1024, 48, true, 4, 300},
                        Size{"aim_xl", 1536, 48, true, 4, 350}, Size{"aim_1b", 2048, 48, true, 4, 350}}) {
    SCOPED_TRACE(s.file);
    const Config c = load_config(source_path(str_cat("configs/", s.file, ".yaml")));
    EXPECT_EQ(c.name, s.file);
    EXPECT_EQ(c.model.d_model, s.d_model);
    EXPECT_EQ(c.model.n_layer, s.n_layer);
    EXPECT_EQ(c.model.adaln_group, s.group);
    EXPECT_EQ(c.model.num_groups, s.groups);
    EXPECT_EQ(c.train.epochs, s.epochs);
    // What the official train_stage2.py ran: its decay list never matches a parameter.
    EXPECT_DOUBLE_EQ(c.optim.weight_decay, 0.0);
    EXPECT_EQ(c.data.aug, "tencrop");
    EXPECT_EQ(c.model.ssm.layer, "Mamba2");
    EXPECT_EQ(c.model.ssm.d_state, 128);
    EXPECT_EQ(c.model.ssm.headdim, 64);
    EXPECT_EQ(c.model.vocab_size, 16384);
    EXPECT_EQ(c.model.num_classes, 1000);
    EXPECT_EQ(c.model.num_tokens, 256);
    EXPECT_EQ(c.vq.ch_mult, (std::vector<int64_t>{1, 1, 2, 2, 4}));
    EXPECT_EQ(c.train.global_batch, 2048);
    EXPECT_DOUBLE_EQ(c.lr(), 8e-4);  // 1e-4 per 256 images
    EXPECT_EQ(c.train.out_dir, str_cat("runs/", s.file));
  }
  const Config t = load_config(source_path("configs/tiny.yaml"));
  EXPECT_EQ(t.model.d_model, 64);
  EXPECT_EQ(t.model.n_layer, 4);
  EXPECT_TRUE(t.model.adaln_group);
  EXPECT_EQ(t.model.num_groups, 2);
  EXPECT_EQ(t.model.ssm.d_state, 16);
  EXPECT_EQ(t.model.ssm.headdim, 16);
  EXPECT_EQ(t.model.ssm.chunk_size, 16);
  EXPECT_EQ(t.model.vocab_size, 512);
  EXPECT_EQ(t.model.num_classes, 10);
  EXPECT_EQ(t.model.num_tokens, 64);
  EXPECT_EQ(t.model.nheads(), 8);
  EXPECT_EQ(t.vq.codebook_size, 512);
  EXPECT_DOUBLE_EQ(t.lr(), 1e-3);
}

TEST(Config, ShippedConfigsHaveCommentHeader) {
  for (const char* f : {"aim_b", "aim_l", "aim_xl", "aim_1b", "tiny"}) {
    std::ifstream in(source_path(str_cat("configs/", f, ".yaml")));
    std::string first;
    std::getline(in, first);
    EXPECT_EQ(first.rfind("# ", 0), 0u) << f;
  }
}

TEST(Config, Defaults) {
  const Config c = config_from_yaml_string("", "empty");
  EXPECT_EQ(c.name, "run");
  EXPECT_EQ(c.train.out_dir, "runs/run");
  EXPECT_EQ(c.model.d_model, 1024);
  EXPECT_EQ(c.model.ssm.d_state, 128);  // resolved from 0
  EXPECT_EQ(c.model.ssm.dt_rank, 0);    // Mamba2 has no dt_rank
  EXPECT_EQ(c.vq.codebook_size, 16384);
  EXPECT_EQ(c.vq.codebook_embed_dim, 8);
  EXPECT_TRUE(c.vq.codebook_l2_norm);
  EXPECT_EQ(c.vq.ch, 128);
  EXPECT_EQ(c.vq.z_channels, 256);
  EXPECT_EQ(c.vq.downsample(), 16);
  EXPECT_EQ(c.data.image_size, 256);
  EXPECT_EQ(c.data.aug, "");  // whatever the codes hold
  EXPECT_DOUBLE_EQ(c.data.crop_ratio, 1.125);
  EXPECT_DOUBLE_EQ(c.optim.base_lr, 1e-4);
  EXPECT_EQ(c.optim.base_batch, 256);
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.0);
  EXPECT_EQ(c.optim.betas, (std::vector<double>{0.9, 0.95}));
  EXPECT_DOUBLE_EQ(c.optim.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.optim.weight_decay, 0.05);
  EXPECT_DOUBLE_EQ(c.optim.grad_clip, 1.0);
  EXPECT_EQ(c.schedule.type, "linear");
  EXPECT_EQ(c.train.epochs, 300);
  EXPECT_EQ(c.train.precision, "auto");
  EXPECT_DOUBLE_EQ(c.train.ema_decay, 0.9999);
  EXPECT_DOUBLE_EQ(c.sample.temperature, 1.0);
  EXPECT_EQ(c.sample.top_k, 0);
  EXPECT_DOUBLE_EQ(c.sample.top_p, 1.0);
  EXPECT_EQ(c.dist.backend, "auto");
  EXPECT_DOUBLE_EQ(c.lr(), 1e-4);  // global batch 256

  // A default-constructed Config validates once resolved.
  Config d;
  d.resolve();
  EXPECT_NO_THROW(d.validate());
  EXPECT_EQ(d, c);
}

TEST(Config, PartialSectionsKeepOtherDefaults) {
  const Config c = config_from_yaml_string("model:\n  n_layer: 2\nvq:\noptim: {lr: 3e-4}\n", "t");
  EXPECT_EQ(c.model.n_layer, 2);
  EXPECT_EQ(c.model.d_model, 1024);
  EXPECT_DOUBLE_EQ(c.lr(), 3e-4);  // absolute lr wins over the per-256 rule
}

TEST(Config, ResolveFillsLayerDefaults) {
  ModelConfig m;
  m.d_model = 48;
  m.ssm.layer = "Mamba1";
  EXPECT_EQ(m.dt_rank(), 3);  // ceil(48 / 16), before and after resolve
  m.resolve();
  EXPECT_EQ(m.ssm.d_state, 16);
  EXPECT_EQ(m.ssm.dt_rank, 3);
  m.resolve();  // idempotent
  EXPECT_EQ(m.ssm.dt_rank, 3);
  m.d_model = 50;
  EXPECT_EQ(m.dt_rank(), 3);  // resolved value kept
  ModelConfig n;
  n.d_model = 50;
  n.ssm.layer = "Mamba1";
  n.resolve();
  EXPECT_EQ(n.ssm.dt_rank, 4);  // ceil(50 / 16)
  ModelConfig k;
  k.ssm.d_state = 64;
  k.resolve();
  EXPECT_EQ(k.ssm.d_state, 64);  // explicit values stay
}

// ------------------------------------------------------------------------------------ round trip

TEST(Config, YamlRoundTrip) {
  for (const char* f : {"aim_b", "aim_l", "aim_xl", "aim_1b", "tiny"}) {
    SCOPED_TRACE(f);
    const Config c = load_config(source_path(str_cat("configs/", f, ".yaml")));
    const std::string yaml = config_to_yaml(c);
    const Config back = config_from_yaml_string(yaml, "dump");
    EXPECT_EQ(back, c) << yaml;
    EXPECT_EQ(config_to_yaml(back), yaml);
  }
  // A tokenizer's (aim train-vq) run config: no model or sample section, which load back at
  // their defaults, whatever the config said.
  for (const char* f : {"vq_demo", "vq_16"}) {
    SCOPED_TRACE(f);
    const Config c = load_config(source_path(str_cat("configs/", f, ".yaml")), {"model.d_model=256", "sample.cfg_scale=2"},
                                 ConfigUse::kTokenizer);
    const std::string yaml = config_to_yaml(c, ConfigUse::kTokenizer);
    EXPECT_EQ(yaml.find("\nmodel:"), std::string::npos);
    EXPECT_EQ(yaml.find("\nsample:"), std::string::npos);
    EXPECT_NE(yaml.find("\nvq_train:"), std::string::npos);
    const Config back = config_from_yaml_string(yaml, "dump", {}, ConfigUse::kTokenizer);
    EXPECT_EQ(back, tokenizer_config(c)) << yaml;
    EXPECT_EQ(back.model.d_model, ModelConfig{}.d_model);
    EXPECT_EQ(config_to_yaml(back, ConfigUse::kTokenizer), yaml);
  }
  // Awkward values: strings that look like other types or need escaping, doubles that are not
  // exact in decimal, tiny and huge magnitudes.
  Config c = load_config(source_path("configs/tiny.yaml"));
  c.data.codes = "path with: colon # and hash \"quoted\" \\ back";
  c.data.images = "true";
  c.vq.weights = "123";
  c.train.out_dir = "";
  c.optim.lr = 0.1 + 0.2;
  c.optim.eps = 1e-300;
  c.optim.betas = {1.0 / 3.0, 0.999999999999};
  c.model.ssm.dt_min = 0.00123456789012345678;
  c.train.seed = 9007199254740993;
  const Config back = config_from_yaml_string(config_to_yaml(c), "dump");
  EXPECT_EQ(back.data.codes, c.data.codes);
  EXPECT_EQ(back.data.images, "true");
  EXPECT_EQ(back.vq.weights, "123");
  EXPECT_EQ(back.optim.lr, 0.1 + 0.2);
  EXPECT_EQ(back.optim.betas, c.optim.betas);
  EXPECT_EQ(back.train.seed, c.train.seed);
  c.resolve();  // out_dir "" -> runs/tiny on both sides
  EXPECT_EQ(back, c);
}

TEST(Config, EqualityNoticesEveryField) {
  const Config a;
  for (const auto& k : config_keys()) {
    Config b;
    switch (k.type) {
      case ConfigType::kInt: apply_override(b, k.key + "=12345"); break;
      case ConfigType::kDouble: apply_override(b, k.key + "=0.123"); break;
      case ConfigType::kBool: apply_override(b, k.key + (config_value(a, k.key) == "true" ? "=false" : "=true")); break;
      case ConfigType::kString: apply_override(b, k.key + "=zz"); break;
      case ConfigType::kIntList: apply_override(b, k.key + "=[7]"); break;
      case ConfigType::kDoubleList: apply_override(b, k.key + "=[0.7]"); break;
    }
    EXPECT_NE(a, b) << k.key;
  }
}

TEST(Config, KeysAreUniqueAndDocumented) {
  const auto keys = config_keys();
  std::set<std::string> seen;
  for (const auto& k : keys) {
    EXPECT_TRUE(seen.insert(k.key).second) << k.key;
    EXPECT_FALSE(k.doc.empty()) << k.key;
  }
  EXPECT_TRUE(seen.count("model.ssm.d_state"));
  EXPECT_TRUE(seen.count("optim.betas"));
  EXPECT_TRUE(seen.count("dist.timeout_s"));
  EXPECT_EQ(config_value(Config{}, "optim.betas"), "[0.9, 0.95]");
  EXPECT_EQ(config_value(Config{}, "model.ssm.layer"), "\"Mamba2\"");
  expect_error([] { config_value(Config{}, "optim.betaz"); }, {"optim.betaz", "optim.betas"});
}

TEST(Config, Table) {
  const Config c = load_config(source_path("configs/aim_l.yaml"));
  const std::string t = config_table(c);
  EXPECT_NE(t.find("| model.ssm.d_state "), std::string::npos) << t;
  EXPECT_NE(t.find("| 128 "), std::string::npos);
  EXPECT_NE(t.find("| Mamba2 "), std::string::npos);
  EXPECT_NE(t.find("| [0.9, 0.95] "), std::string::npos);
  EXPECT_NE(t.find("(derived) peak lr"), std::string::npos);
  EXPECT_NE(t.find("0.0008"), std::string::npos);
  EXPECT_NE(t.find("16x16"), std::string::npos);
  // Every line has the same width.
  size_t width = t.find('\n');
  for (size_t pos = 0; pos < t.size();) {
    const size_t nl = t.find('\n', pos);
    EXPECT_EQ(nl - pos, width);
    pos = nl + 1;
  }
}

// ------------------------------------------------------------------------------------ overrides

TEST(Config, Overrides) {
  const Config c = load_config(source_path("configs/aim_l.yaml"),
                               {"model.ssm.d_state=64", "optim.lr=8e-4", "train.ema=true",
                                "data.codes=/data/codes", "optim.betas=[0.8, 0.99]",
                                "vq.ch_mult=[1, 1, 2, 2, 2]", "name=l_run2", "model.n_layer=12"});
  EXPECT_EQ(c.model.ssm.d_state, 64);
  EXPECT_DOUBLE_EQ(c.optim.lr, 8e-4);
  EXPECT_TRUE(c.train.ema);
  EXPECT_EQ(c.data.codes, "/data/codes");
  EXPECT_EQ(c.optim.betas, (std::vector<double>{0.8, 0.99}));
  EXPECT_EQ(c.vq.ch_mult, (std::vector<int64_t>{1, 1, 2, 2, 2}));
  EXPECT_EQ(c.name, "l_run2");
  EXPECT_EQ(c.train.out_dir, "runs/l_run2");
  EXPECT_EQ(c.model.n_layer, 12);

  Config d;
  apply_override(d, "train.out_dir=");  // empty value: empty string
  EXPECT_EQ(d.train.out_dir, "");
  apply_override(d, "sample.cfg_scale=2");  // an integer is a fine number
  EXPECT_DOUBLE_EQ(d.sample.cfg_scale, 2.0);
  apply_override(d, "train.ema=no");
  EXPECT_FALSE(d.train.ema);
  apply_override(d, "model.ssm.layer=Mamba1");
  EXPECT_EQ(d.model.ssm.layer, "Mamba1");
  apply_override(d, "model.d_model=100");
  apply_override(d, "data.codes=a=b");  // only the first '=' splits
  EXPECT_EQ(d.data.codes, "a=b");
  // Strings are taken as written: YAML would drop " #2" as a comment and read "x: y" as a map.
  apply_override(d, "train.out_dir=runs/a #2");
  EXPECT_EQ(d.train.out_dir, "runs/a #2");
  apply_override(d, "data.images=/data/x: y, [z]");
  EXPECT_EQ(d.data.images, "/data/x: y, [z]");
  apply_override(d, "data.images=~");
  EXPECT_EQ(d.data.images, "~");
  apply_override(d, "train.out_dir= runs/b ");  // surrounding blanks go, as YAML's would
  EXPECT_EQ(d.train.out_dir, "runs/b");
  apply_override(d, "train.out_dir='runs/it''s'");  // a YAML-quoted value is unquoted
  EXPECT_EQ(d.train.out_dir, "runs/it's");
  apply_override(d, "data.codes=\"q #1\"");
  EXPECT_EQ(d.data.codes, "q #1");
  d.resolve();
  EXPECT_EQ(d.model.ssm.d_state, 16);
  EXPECT_EQ(d.model.ssm.dt_rank, 7);
}

TEST(Config, OverrideErrors) {
  Config c;
  expect_error([&] { apply_override(c, "model.d_modle=5"); },
               {"--set", "unknown key 'model.d_modle'", "did you mean 'model.d_model'"});
  expect_error([&] { apply_override(c, "model.ssm.dstate=5"); },
               {"--set", "did you mean 'model.ssm.d_state'"});
  expect_error([&] { apply_override(c, "train.lr=5"); }, {"--set", "did you mean 'optim.lr'"});
  expect_error([&] { apply_override(c, "optim.lr=abc"); },
               {"--set optim.lr=abc", "key 'optim.lr'", "expected a number", "found 'abc'"});
  expect_error([&] { apply_override(c, "model.d_model=1.5"); },
               {"key 'model.d_model'", "expected an integer", "'1.5'"});
  expect_error([&] { apply_override(c, "train.ema=maybe"); },
               {"key 'train.ema'", "true or false", "'maybe'"});
  expect_error([&] { apply_override(c, "optim.betas=0.9"); },
               {"key 'optim.betas'", "a list of numbers", "'0.9'"});
  expect_error([&] { apply_override(c, "vq.ch_mult=[1, x]"); }, {"vq.ch_mult[1]", "'x'"});
  expect_error([&] { apply_override(c, "optim.lr"); }, {"--set optim.lr", "no '='"});
  expect_error([&] { apply_override(c, "model=5"); }, {"--set", "'model' is a section"});
  expect_error([&] { apply_override(c, "optim.lr=[1, 2"); }, {"--set", "YAML syntax error"});
  expect_error([&] { apply_override(c, "model.d_model=99999999999999999999"); },
               {"model.d_model", "expected an integer"});
  expect_error([&] { load_config(source_path("configs/tiny.yaml"), {"model.ssm.d_state=0.5"}); },
               {"--set", "model.ssm.d_state"});
  // Overrides that break a rule: the message names the file, the overrides and the key.
  expect_error([&] { load_config(source_path("configs/tiny.yaml"), {"model.ssm.headdim=24"}); },
               {"tiny.yaml with --set overrides", "model.ssm.headdim", "found 24"});
}

// ------------------------------------------------------------------------------------ validation

struct Rule {
  std::vector<std::string> overrides;
  std::vector<std::string> parts;  ///< substrings the message must contain (key, found value)
};

TEST(Config, EveryValidationRuleNamesItsKey) {
  const std::vector<Rule> rules = {
      {{"model.d_model=0"}, {"'model.d_model'", "found 0"}},
      {{"model.n_layer=-1"}, {"'model.n_layer'", "found -1"}},
      {{"model.d_intermediate=512"}, {"'model.d_intermediate'", "found 512", "MLP", "HINT"}},
      {{"model.vocab_size=70000", "vq.codebook_size=70000"}, {"'model.vocab_size'", "70000", "[2, 65536]"}},
      {{"model.vocab_size=1", "vq.codebook_size=1"}, {"'model.vocab_size'", "found 1"}},
      {{"model.num_classes=0"}, {"'model.num_classes'", "found 0"}},
      {{"model.num_tokens=200"}, {"'model.num_tokens'", "perfect square", "found 200"}},
      {{"model.num_tokens=0"}, {"'model.num_tokens'", "found 0"}},
      {{"model.num_groups=0"}, {"'model.num_groups'", "found 0"}},
      {{"model.rms_norm=false"}, {"'model.rms_norm'", "found false", "LayerNorm"}},
      {{"model.pad_vocab_size_multiple=0"}, {"'model.pad_vocab_size_multiple'", "found 0"}},
      {{"model.norm_eps=0"}, {"'model.norm_eps'", "found 0"}},
      {{"model.token_drop=1"}, {"'model.token_drop'", "[0, 1)", "found 1"}},
      {{"model.mixer_drop=-0.5"}, {"'model.mixer_drop'", "found -0.5"}},
      {{"model.mlp_drop=2"}, {"'model.mlp_drop'", "found 2"}},
      {{"model.class_dropout=1.5"}, {"'model.class_dropout'", "found 1.5"}},
      {{"model.initializer_range=0"}, {"'model.initializer_range'", "found 0"}},
      {{"model.decode_position_offset=2"}, {"'model.decode_position_offset'", "found 2"}},
      {{"model.ssm.layer=Mamba3"}, {"'model.ssm.layer'", "'Mamba2'", "found 'Mamba3'"}},
      {{"model.ssm.d_state=512"}, {"'model.ssm.d_state'", "[", "found 512"}},
      {{"model.ssm.d_state=-1"}, {"'model.ssm.d_state'", "found -1"}},
      {{"model.ssm.d_conv=5"}, {"'model.ssm.d_conv'", "[2, 4]", "found 5"}},
      {{"model.ssm.d_conv=1"}, {"'model.ssm.d_conv'", "found 1"}},
      {{"model.ssm.expand=0"}, {"'model.ssm.expand'", "found 0"}},
      {{"model.ssm.headdim=0"}, {"'model.ssm.headdim'", "found 0"}},
      {{"model.ssm.headdim=100"}, {"'model.ssm.headdim'", "2048", "found 100"}},
      {{"model.ssm.ngroups=0"}, {"'model.ssm.ngroups'", "found 0"}},
      {{"model.ssm.ngroups=3"}, {"'model.ssm.ngroups'", "32", "found 3"}},
      {{"model.ssm.chunk_size=0"}, {"'model.ssm.chunk_size'", "found 0"}},
      {{"model.ssm.layer=Mamba1", "model.ssm.dt_rank=-2"}, {"'model.ssm.dt_rank'", "found -2"}},
      {{"model.ssm.dt_min=0"}, {"'model.ssm.dt_min'", "found 0"}},
      {{"model.ssm.dt_max=0.0001"}, {"'model.ssm.dt_max'", "dt_min", "found 0.0001"}},
      {{"model.ssm.dt_init_floor=-1"}, {"'model.ssm.dt_init_floor'", "found -1"}},
      {{"model.ssm.dt_scale=0"}, {"'model.ssm.dt_scale'", "found 0"}},
      {{"model.ssm.a_init_min=0"}, {"'model.ssm.a_init_min'", "found 0"}},
      {{"model.ssm.a_init_max=0.5"}, {"'model.ssm.a_init_max'", "found 0.5"}},
      {{"vq.codebook_size=1000"}, {"'vq.codebook_size'", "model.vocab_size", "found 1000"}},
      {{"vq.codebook_embed_dim=0"}, {"'vq.codebook_embed_dim'", "found 0"}},
      {{"vq.ch=48"}, {"'vq.ch'", "multiple of vq.norm_groups (32)", "found 48"}},
      {{"vq.norm_groups=0"}, {"'vq.norm_groups'", "found 0"}},
      {{"vq.ch_mult=[]"}, {"'vq.ch_mult'", "found 0 entries"}},
      {{"vq.ch_mult=[1, 1, 0, 2, 4]"}, {"'vq.ch_mult[2]'", "found 0"}},
      {{"vq.z_channels=0"}, {"'vq.z_channels'", "found 0"}},
      {{"vq.num_res_blocks=0"}, {"'vq.num_res_blocks'", "found 0"}},
      {{"vq.dropout=1"}, {"'vq.dropout'", "found 1"}},
      {{"data.image_size=0"}, {"'data.image_size'", "found 0"}},
      {{"data.image_size=250"}, {"'data.image_size'", "16", "found 250"}},
      {{"data.image_size=512"}, {"'model.num_tokens'", "32x32", "found 256"}},
      {{"data.aug=crop"}, {"'data.aug'", "'tencrop'", "found 'crop'"}},
      {{"data.crop_ratio=0.5"}, {"'data.crop_ratio'", "found 0.5"}},
      {{"data.num_workers=-1"}, {"'data.num_workers'", "found -1"}},
      {{"optim.base_lr=0"}, {"'optim.base_lr'", "found 0"}},
      {{"optim.base_batch=0"}, {"'optim.base_batch'", "found 0"}},
      {{"optim.lr=-1"}, {"'optim.lr'", "found -1"}},
      {{"optim.betas=[0.9]"}, {"'optim.betas'", "two numbers", "found 1 numbers"}},
      {{"optim.betas=[0.9, 1.0]"}, {"'optim.betas[1]'", "[0, 1)", "found 1"}},
      {{"optim.betas=[-0.1, 0.9]"}, {"'optim.betas[0]'", "found -0.1"}},
      {{"optim.eps=0"}, {"'optim.eps'", "found 0"}},
      {{"optim.weight_decay=-0.1"}, {"'optim.weight_decay'", "found -0.1"}},
      {{"optim.grad_clip=-1"}, {"'optim.grad_clip'", "found -1"}},
      {{"schedule.type=step"}, {"'schedule.type'", "'cosine'", "found 'step'"}},
      {{"schedule.warmup_steps=-1"}, {"'schedule.warmup_steps'", "found -1"}},
      {{"schedule.warmup_ratio=1.5"}, {"'schedule.warmup_ratio'", "found 1.5"}},
      {{"schedule.warmup_steps=100", "schedule.warmup_ratio=0.1"},
       {"'schedule.warmup_ratio'", "warmup_steps", "found 0.1"}},
      {{"schedule.min_lr_ratio=2"}, {"'schedule.min_lr_ratio'", "[0, 1]", "found 2"}},
      {{"train.epochs=0"}, {"'train.epochs'", "found 0"}},
      {{"train.max_steps=-1"}, {"'train.max_steps'", "found -1"}},
      {{"train.global_batch=0"}, {"'train.global_batch'", "found 0"}},
      {{"train.micro_batch=0"}, {"'train.micro_batch'", "found 0"}},
      {{"train.global_batch=100"}, {"'train.global_batch'", "multiple of train.micro_batch (64)", "found 100"}},
      {{"train.precision=fp16"}, {"'train.precision'", "'bf16'", "'auto'", "found 'fp16'"}},
      {{"train.ema_decay=1"}, {"'train.ema_decay'", "found 1"}},
      {{"train.seed=-1"}, {"'train.seed'", "found -1"}},
      {{"train.ckpt_every=-1"}, {"'train.ckpt_every'", "found -1"}},
      {{"train.keep_last=0"}, {"'train.keep_last'", "found 0"}},
      {{"train.log_every=0"}, {"'train.log_every'", "found 0"}},
      {{"train.sample_every=-1"}, {"'train.sample_every'", "found -1"}},
      {{"sample.cfg_scale=-1"}, {"'sample.cfg_scale'", "[0, 100]", "found -1"}},
      {{"sample.temperature=0"}, {"'sample.temperature'", "[1e-4, 1e4]", "found 0"}},
      {{"sample.cfg_scale=1000"}, {"'sample.cfg_scale'", "[0, 100]", "found 1000"}},
      {{"sample.top_k=-1"}, {"'sample.top_k'", "found -1"}},
      {{"sample.top_p=0"}, {"'sample.top_p'", "(0, 1]", "found 0"}},
      {{"sample.top_p=1.5"}, {"'sample.top_p'", "found 1.5"}},
      {{"sample.seed=-3"}, {"'sample.seed'", "found -3"}},
      {{"sample.batch_size=0"}, {"'sample.batch_size'", "found 0"}},
      {{"sample.num_samples=0"}, {"'sample.num_samples'", "found 0"}},
      {{"sample.dtype=fp64"}, {"'sample.dtype'", "found 'fp64'"}},
      {{"dist.backend=mpi"}, {"'dist.backend'", "'nccl'", "found 'mpi'"}},
      {{"dist.timeout_s=0"}, {"'dist.timeout_s'", "found 0"}},
      {{"name=a b"}, {"'name'", "found 'a b'"}},
  };
  for (const Rule& r : rules) {
    SCOPED_TRACE(r.overrides.front());
    expect_error([&] { config_from_yaml_string("", "rules.yaml", r.overrides); }, r.parts);
    expect_error([&] { config_from_yaml_string("", "rules.yaml", r.overrides); },
                 {"rules.yaml with --set overrides: "});
  }
}

TEST(Config, ValidationRulesDependOnTheLayer) {
  // Mamba1 has no heads: a headdim that does not divide d_inner is irrelevant.
  ModelConfig m;
  m.ssm.layer = "Mamba1";
  m.ssm.headdim = 100;
  EXPECT_NO_THROW(m.validate());
  // adaLN (not group) ignores num_groups.
  ModelConfig b;
  b.adaln_group = false;
  b.num_groups = 0;
  EXPECT_NO_THROW(b.validate());
  // validate() works on an unresolved config (d_state 0 = the layer default).
  ModelConfig u;
  ASSERT_EQ(u.ssm.d_state, 0);
  EXPECT_NO_THROW(u.validate());
  EXPECT_NO_THROW(u.ssm.validate());
}

// ------------------------------------------------------------------------------------ YAML errors

TEST(Config, UnknownKeysSuggestTheClosest) {
  expect_error([] { config_from_yaml_string("model:\n  d_modle: 768\n", "configs/x.yaml"); },
               {"configs/x.yaml: unknown key 'model.d_modle'", "line 2",
                "---> HINT: did you mean 'model.d_model'?"});
  expect_error([] { config_from_yaml_string("model:\n  ssm:\n    hedadim: 32\n", "x.yaml"); },
               {"unknown key 'model.ssm.hedadim'", "line 3", "did you mean 'model.ssm.headdim'"});
  expect_error([] { config_from_yaml_string("modle:\n  d_model: 768\n", "x.yaml"); },
               {"unknown key 'modle'", "did you mean 'model'"});
  expect_error([] { config_from_yaml_string("train:\n  lr: 0.1\n", "x.yaml"); },
               {"unknown key 'train.lr'", "did you mean 'optim.lr'"});
  // Nothing close: list the section's keys instead.
  expect_error([] { config_from_yaml_string("dist:\n  zzzzzzzzzzzzzzzzzz: 1\n", "x.yaml"); },
               {"unknown key 'dist.zzzzzzzzzzzzzzzzzz'", "keys under 'dist' are backend, timeout_s"});
}

TEST(Config, WrongTypes) {
  expect_error([] { config_from_yaml_string("optim:\n  lr: abc\n", "x.yaml"); },
               {"x.yaml: key 'optim.lr': expected a number, found 'abc'", "line 2"});
  expect_error([] { config_from_yaml_string("model:\n  d_model: 76.8\n", "x.yaml"); },
               {"key 'model.d_model'", "expected an integer", "'76.8'"});
  expect_error([] { config_from_yaml_string("train:\n  ema: 2\n", "x.yaml"); },
               {"key 'train.ema'", "true or false", "'2'"});
  expect_error([] { config_from_yaml_string("optim:\n  betas: 0.9\n", "x.yaml"); },
               {"key 'optim.betas'", "a list of numbers", "'0.9'"});
  expect_error([] { config_from_yaml_string("vq:\n  ch_mult: [1, 2.5]\n", "x.yaml"); },
               {"key 'vq.ch_mult[1]'", "expected an integer", "'2.5'"});
  expect_error([] { config_from_yaml_string("name: {a: 1}\n", "x.yaml"); },
               {"key 'name'", "a string", "a mapping"});
  expect_error([] { config_from_yaml_string("model: 5\n", "x.yaml"); },
               {"key 'model'", "a section", "'5'"});
  expect_error([] { config_from_yaml_string("model:\n  d_model: [1]\n", "x.yaml"); },
               {"key 'model.d_model'", "an integer", "a list"});
  expect_error([] { config_from_yaml_string("optim:\n  lr:\n", "x.yaml"); },
               {"key 'optim.lr'", "a number", "null"});
  expect_error([] { config_from_yaml_string("optim:\n  lr: .inf\n", "x.yaml"); },
               {"key 'optim.lr'", "a number", "'.inf'"});
  expect_error([] { config_from_yaml_string("- model\n- vq\n", "x.yaml"); },
               {"x.yaml", "expected a mapping of sections", "a list"});
  expect_error([] { config_from_yaml_string("model:\n  d_model: 5\n  d_model: 6\n", "x.yaml"); },
               {"key 'model.d_model' appears twice", "line 3"});
  // A dotted key at the top level sets the same value as the nested one: both is one key twice
  // (either order), whichever came last having won silently before.
  expect_error([] { config_from_yaml_string("model:\n  d_model: 768\nmodel.d_model: 1024\n", "x.yaml"); },
               {"key 'model.d_model' appears twice", "line 3"});
  expect_error([] { config_from_yaml_string("model.d_model: 1024\nmodel:\n  d_model: 768\n", "x.yaml"); },
               {"key 'model.d_model' appears twice", "line 3"});
  EXPECT_EQ(config_from_yaml_string("model.d_model: 1024\nmodel:\n  n_layer: 2\n", "x.yaml").model.d_model, 1024);
}

TEST(Config, YamlSyntaxErrorsGiveTheLine) {
  expect_error([] { config_from_yaml_string("model:\n  d_model: 768\n  ssm: [1, 2\n", "bad.yaml"); },
               {"bad.yaml: YAML syntax error at line"});
  expect_error([] { config_from_yaml_string("model:\n  d_model: 768\n  n_layer: 3: 4\n", "bad.yaml"); },
               {"bad.yaml: YAML syntax error at line 3, column 13"});
  expect_error([] { config_from_yaml_string("name: a\noptim:\n  betas: [1, 2]]\n", "bad.yaml"); },
               {"bad.yaml: YAML syntax error at line 3"});
  const std::string path = write_temp("syntax.yaml", "name: a\nmodel:\n  d_model: 5\n   n_layer: 2\n");
  expect_error([&] { load_config(path); }, {"syntax.yaml", "YAML syntax error at line 4"});
}

TEST(Config, MissingFile) {
  expect_error([] { load_config("/nonexistent/dir/aim_q.yaml"); },
               {"/nonexistent/dir/aim_q.yaml", "cannot open", "HINT"});
}

TEST(Config, LoadConfigNamesTheRunAfterTheFile) {
  const std::string path = write_temp("my_run.yaml", "model:\n  n_layer: 2\n");
  const Config c = load_config(path);
  EXPECT_EQ(c.name, "my_run");
  EXPECT_EQ(c.train.out_dir, "runs/my_run");
  EXPECT_EQ(c.model.n_layer, 2);
  expect_error([&] { load_config(write_temp("bad_rule.yaml", "sample:\n  top_p: 0\n")); },
               {"bad_rule.yaml: key 'sample.top_p'", "found 0"});
  // Dots alone would make runs/<name> the runs folder itself or the one above it.
  for (const char* dots : {".", ".."})
    expect_error([&] { load_config(path, {str_cat("name=", dots)}); },
                 {"key 'name'", "other than dots alone", str_cat("found '", dots, "'")});
  EXPECT_EQ(load_config(path, {"name=v1.2"}).train.out_dir, "runs/v1.2");
}

TEST(Config, EachUseAppliesTheRulesOfWhatItReads) {
  // A model-only file beside weights (aim sample --config): the model is read, and the defaults
  // of the sections it leaves out (a 16384-code tokenizer, 256 px images) need not agree with it.
  const std::string model_only =
      write_temp("model_only.yaml", "model:\n  vocab_size: 1024\n  num_tokens: 64\n  n_layer: 2\n");
  expect_error([&] { load_config(model_only); }, {"model_only.yaml", "key 'vq.codebook_size'"});
  const Config m = load_config(model_only, {}, ConfigUse::kModel);
  EXPECT_EQ(m.model.vocab_size, 1024);
  EXPECT_EQ(m.model.num_tokens, 64);
  expect_error([&] { load_config(model_only, {"model.d_model=0"}, ConfigUse::kModel); }, {"key 'model.d_model'"});
  // A tokenizer's config (aim train-vq) does not use the model or sample sections: their values
  // are not checked (they are dropped from its run config).
  const Config t = load_config(source_path("configs/vq_demo.yaml"), {"model.d_intermediate=8", "sample.top_p=0"},
                               ConfigUse::kTokenizer);
  EXPECT_EQ(tokenizer_config(t).model.d_intermediate, ModelConfig{}.d_intermediate);
  expect_error([&] { load_config(source_path("configs/vq_demo.yaml"), {"model.d_intermediate=8"}); },
               {"model.d_intermediate"});
}

// ------------------------------------------------------------------------------------ Hugging Face

TEST(HfConfig, Mamba1Fixture) {
  const std::string path = source_path("tests/fixtures/aim/mamba1_tiny/config.json");
  ASSERT_TRUE(looks_like_hf_config(path));
  const ModelConfig m = model_config_from_hf_json(path);
  EXPECT_EQ(m.ssm.layer, "Mamba1");
  EXPECT_FALSE(m.is_mamba2());
  EXPECT_EQ(m.d_model, 48);
  EXPECT_EQ(m.n_layer, 3);
  EXPECT_EQ(m.d_intermediate, 0);
  EXPECT_EQ(m.vocab_size, 512);
  EXPECT_EQ(m.ssm.d_state, 8);
  EXPECT_EQ(m.ssm.d_conv, 4);
  EXPECT_EQ(m.ssm.expand, 2);
  EXPECT_EQ(m.ssm.dt_rank, 3);  // "auto" = ceil(48 / 16)
  EXPECT_EQ(m.dt_rank(), 3);
  EXPECT_EQ(m.d_inner(), 96);
  EXPECT_FALSE(m.adaln_group);
  EXPECT_EQ(m.num_groups, 1);
  EXPECT_EQ(m.num_classes, 10);
  EXPECT_EQ(m.num_tokens, 64);
  EXPECT_TRUE(m.rms_norm);
  EXPECT_TRUE(m.tie_embeddings);
  EXPECT_DOUBLE_EQ(m.class_dropout, 0.1);
  EXPECT_EQ(m.decode_position_offset, 1);
}

TEST(HfConfig, Mamba2Fixture) {
  const std::string dir = source_path("tests/fixtures/aim/mamba2_tiny");
  ASSERT_TRUE(looks_like_hf_config(dir));  // a snapshot directory works too
  const ModelConfig m = model_config_from_hf_json(dir + "/config.json");
  EXPECT_EQ(m.ssm.layer, "Mamba2");
  EXPECT_EQ(m.d_model, 64);
  EXPECT_EQ(m.n_layer, 4);
  EXPECT_EQ(m.ssm.d_state, 16);
  EXPECT_EQ(m.ssm.headdim, 16);
  EXPECT_EQ(m.ssm.ngroups, 1);
  EXPECT_EQ(m.ssm.chunk_size, 16);
  EXPECT_EQ(m.nheads(), 8);
  EXPECT_TRUE(m.adaln_group);
  EXPECT_EQ(m.num_groups, 2);
  EXPECT_FALSE(m.ssm.norm_before_gate);
  EXPECT_TRUE(m.ssm.rmsnorm);
  // configs/tiny.yaml is this model.
  EXPECT_EQ(m, load_config(source_path("configs/tiny.yaml")).model);
}

TEST(HfConfig, MissingFieldsTakeTheOfficialDefaults) {
  const ModelConfig m = model_config_from_hf_json(write_temp("empty.json", "{}"));
  EXPECT_EQ(m.d_model, 1024);
  EXPECT_EQ(m.n_layer, 48);
  EXPECT_EQ(m.vocab_size, 16384);
  EXPECT_EQ(m.num_classes, 1000);
  EXPECT_EQ(m.num_tokens, 256);
  EXPECT_FALSE(m.adaln_group);  // dataclass default, unlike ModelConfig's
  EXPECT_EQ(m.num_groups, 1);
  EXPECT_EQ(m.ssm.layer, "Mamba2");
  EXPECT_EQ(m.ssm.d_state, 128);
  EXPECT_EQ(m.ssm.headdim, 64);
  // An ssm_cfg without "layer" is Mamba1 (mamba_ssm's create_block default).
  const ModelConfig m1 = model_config_from_hf_json(
      write_temp("nolayer.json", R"({"d_model": 64, "ssm_cfg": {"d_state": 4}})"));
  EXPECT_EQ(m1.ssm.layer, "Mamba1");
  EXPECT_EQ(m1.ssm.d_state, 4);
  EXPECT_EQ(m1.ssm.dt_rank, 4);
  // HF snapshot extras are ignored; Mamba2 arguments that only pick kernels too.
  const ModelConfig m2 = model_config_from_hf_json(write_temp("extras.json", R"({
    "architectures": ["AiM"], "transformers_version": "4.44", "model_type": "aim",
    "_name_or_path": "hp-l33/aim-large", "torch_dtype": "float32",
    "ssm_cfg": {"layer": "Mamba2", "use_mem_eff_path": false, "d_ssm": null,
                "dt_limit": [0.0, 1e9], "A_init_range": [2, 8], "D_has_hdim": true},
    "adaln_group": true, "num_groups": 4})"));
  EXPECT_DOUBLE_EQ(m2.ssm.a_init_min, 2.0);
  EXPECT_DOUBLE_EQ(m2.ssm.a_init_max, 8.0);
  EXPECT_TRUE(m2.ssm.d_has_hdim);
  EXPECT_EQ(m2.num_groups, 4);
}

TEST(HfConfig, Errors) {
  expect_error([] { model_config_from_hf_json(write_temp("unknown.json", R"({"d_model": 64, "n_layers": 4})")); },
               {"unknown.json", "unknown field 'n_layers'", "n_layer"});
  expect_error([] { model_config_from_hf_json(write_temp("type.json", R"({"d_model": "64"})")); },
               {"type.json", "field 'd_model'", "an integer", "\"64\""});
  expect_error([] { model_config_from_hf_json(write_temp("bool.json", R"({"adaln_group": 1})")); },
               {"field 'adaln_group'", "true or false"});
  expect_error([] { model_config_from_hf_json(write_temp("attn.json", R"({"attn_layer_idx": [3]})")); },
               {"attn_layer_idx", "[3]", "attention"});
  expect_error(
      [] { model_config_from_hf_json(write_temp("m1head.json", R"({"ssm_cfg": {"layer": "Mamba1", "headdim": 32}})")); },
      {"ssm_cfg.headdim", "not an argument of Mamba1"});
  expect_error(
      [] { model_config_from_hf_json(write_temp("layer.json", R"({"ssm_cfg": {"layer": "Mamba3"}})")); },
      {"ssm_cfg.layer", "Mamba3"});
  expect_error(
      [] { model_config_from_hf_json(write_temp("dtrank.json", R"({"ssm_cfg": {"layer": "Mamba1", "dt_rank": "big"}})")); },
      {"ssm_cfg.dt_rank", "\"auto\"", "\"big\""});
  expect_error(
      [] {
        model_config_from_hf_json(
            write_temp("dtlimit.json", R"({"ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.001, 0.1]}})"));
      },
      {"dtlimit.json", "ssm_cfg.dt_limit", "[0.001,0.1]", "not supported"});
  expect_error([] { model_config_from_hf_json(write_temp("mlp.json", R"({"d_intermediate": 256})")); },
               {"mlp.json", "model.d_intermediate", "found 256"});
  expect_error([] { model_config_from_hf_json(write_temp("syntax.json", "{\n  \"d_model\": 64,\n  oops\n}")); },
               {"syntax.json", "invalid JSON at line 3"});
  expect_error([] { model_config_from_hf_json("/nonexistent/config.json"); },
               {"/nonexistent/config.json", "cannot open"});
  EXPECT_FALSE(looks_like_hf_config("/nonexistent/config.json"));
  EXPECT_FALSE(looks_like_hf_config(source_path("configs/tiny.yaml")));
  EXPECT_FALSE(looks_like_hf_config(write_temp("other.json", R"({"hidden_size": 5})")));
}

TEST(HfConfig, WriteReadRoundTrip) {
  for (const char* c : {"mamba1_tiny", "mamba2_tiny"}) {
    SCOPED_TRACE(c);
    const ModelConfig m = model_config_from_hf_json(source_path(str_cat("tests/fixtures/aim/", c, "/config.json")));
    const std::string path = write_temp(str_cat(c, "_out.json"), model_config_to_hf_json(m));
    EXPECT_EQ(model_config_from_hf_json(path), m);
  }
  const ModelConfig l = load_config(source_path("configs/aim_l.yaml")).model;
  EXPECT_EQ(model_config_from_hf_json(write_temp("aim_l.json", model_config_to_hf_json(l))), l);
  // The same fields nested as {"config": {...}} (a hub mixin's layout) read alike.
  const std::string nested = write_temp("aim_l_nested.json", "{\"config\": " + model_config_to_hf_json(l) + "}");
  EXPECT_TRUE(looks_like_hf_config(nested));
  EXPECT_EQ(model_config_from_hf_json(nested), l);
}

TEST(VqJson, FieldsAliasesAndErrors) {
  // LlamaGen's ModelArgs names, AiM's VQModel names and descriptive extras.
  const VqConfig c = vq_config_from_json(write_temp("vq_alias.json", R"({"n_embed": 1024, "embed_dim": 4,
      "ch_mult": [1, 2], "z_channels": 8, "ch": 16, "group_norm_groups": 8, "codebook_l2_norm": false,
      "dropout_p": 0.1, "in_channels": 3, "norm_type": "group", "attention": "last level"})"));
  EXPECT_EQ(c.codebook_size, 1024);
  EXPECT_EQ(c.codebook_embed_dim, 4);
  EXPECT_EQ(c.ch_mult, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(c.norm_groups, 8);
  EXPECT_FALSE(c.codebook_l2_norm);
  EXPECT_DOUBLE_EQ(c.dropout, 0.1);
  expect_error([] { vq_config_from_json(write_temp("vq_bool.json", R"({"codebook_l2_norm": 1})")); },
               {"vq_bool.json", "field 'codebook_l2_norm'", "true or false", "found 1"});
  expect_error([] { vq_config_from_json(write_temp("vq_drop.json", R"({"dropout_p": "0"})")); },
               {"vq_drop.json", "field 'dropout_p'", "a number"});
  expect_error([] { vq_config_from_json(write_temp("vq_in.json", R"({"in_channels": 4})")); },
               {"vq_in.json", "field 'in_channels'", "expected 3", "found 4"});
  expect_error([] { vq_config_from_json(write_temp("vq_norm.json", R"({"norm_type": "batch"})")); },
               {"vq_norm.json", "field 'norm_type'", "\"batch\""});
  expect_error([] { vq_config_from_json(write_temp("vq_asym.json", R"({"encoder_ch_mult": [1, 2], "decoder_ch_mult": [2, 1]})")); },
               {"vq_asym.json", "decoder_ch_mult", "symmetric"});
  // An AiM config.json given as a tokenizer's.
  expect_error([] { vq_config_from_json(source_path("tests/fixtures/aim/mamba2_tiny/config.json")); },
               {"mamba2_tiny/config.json", "a language model's config", "HINT"});
}

TEST(VqJson, MisspelledFieldsAreRefusedAndOthersNamed) {
  // A field a few edits from a known one kept the default silently (then a shape mismatch of
  // some tensor, or a tokenizer built otherwise than its author meant).
  expect_error([] { vq_config_from_json(write_temp("vq_typo.json", R"({"codebok_size": 1024})")); },
               {"vq_typo.json", "unknown field 'codebok_size'", "did you mean 'codebook_size'?"});
  expect_error([] { vq_config_from_json(write_temp("vq_typo2.json", R"({"num_resblocks": 1})")); },
               {"vq_typo2.json", "unknown field 'num_resblocks'", "did you mean 'num_res_blocks'?"});
  expect_error([] { vq_config_from_json(write_temp("vq_typo3.json", R"({"encoder_ch_mul": [1, 2]})")); },
               {"unknown field 'encoder_ch_mul'", "did you mean 'encoder_ch_mult'?"});
  // The architecture's fixed values, where a file states them.
  expect_error([] { vq_config_from_json(write_temp("vq_eps.json", R"({"group_norm_eps": 1e-5})")); },
               {"vq_eps.json", "field 'group_norm_eps'", "expected 1e-06", "found 1e-05"});
  expect_error([] { vq_config_from_json(write_temp("vq_resamp.json", R"({"resamp_with_conv": false})")); },
               {"field 'resamp_with_conv'", "expected true", "found false"});
  expect_error([] { vq_config_from_json(write_temp("vq_ds.json", R"({"ch_mult": [1, 1, 2, 2, 4], "downsample_factor": 8})")); },
               {"field 'downsample_factor'", "5 levels", "by 16", "found 8"});
  // LlamaGen's training settings, "_comment"-style keys and matching stated values: read quietly.
  testing::internal::CaptureStderr();
  const VqConfig quiet = vq_config_from_json(write_temp("vq_quiet.json", R"({"codebook_size": 4096,
      "commit_loss_beta": 0.25, "entropy_loss_ratio": 0.0, "codebook_show_usage": true, "attn_resolutions": [16],
      "_comment": "exported", "group_norm_eps": 1e-06, "resamp_with_conv": true, "downsample_factor": 16})"));
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(quiet.codebook_size, 4096);
  // Short keys and real names of other tools are no misspellings: named, not refused.
  testing::internal::CaptureStderr();
  vq_config_from_json(write_temp("vq_other.json", R"({"id": "x", "lr": 1e-4, "dropout": 0.0})"));
  const std::string other = testing::internal::GetCapturedStderr();
  EXPECT_NE(other.find("vq_other.json: fields 'dropout', 'id', 'lr' not read"), std::string::npos) << other;
  // Fields far from any known one are named, once, and the rest read.
  testing::internal::CaptureStderr();
  const VqConfig fixture = vq_config_from_json(source_path("tests/fixtures/vq/vq16_tiny/config.json"));
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("vq16_tiny/config.json: fields 'attention', 'fixture' not read"), std::string::npos) << said;
  EXPECT_EQ(fixture.codebook_size, 512);
  EXPECT_EQ(fixture.ch, 32);
}

}  // namespace
}  // namespace aim
