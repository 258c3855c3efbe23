// `aim make-dataset KIND`: built-in datasets for trying the framework without ImageNet
// (`codes`: synthetic code sequences; `shapes`: procedural images).
#include <filesystem>
#include <iostream>

#include "aim/cli/commands.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/data/code_dataset.h"
#include "aim/data/shapes.h"
#include "aim/data/synthetic.h"

namespace aim::cli {

Runner add_make_dataset_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("make-dataset", "Generate a built-in dataset");
  cmd->require_subcommand(1);
  auto* codes = cmd->add_subcommand("codes", "Synthetic class-conditional codes (Markov chains) for aim train");
  auto o = std::make_shared<SyntheticCodesOptions>();
  auto out = std::make_shared<std::string>();
  codes->add_option("--out", *out, "code dataset file to write")->required();
  codes->add_option("--classes", o->classes, "classes")->capture_default_str();
  codes->add_option("--per-class", o->per_class, "images per class")->capture_default_str();
  codes->add_option("--tokens", o->tokens, "codes per image (model.num_tokens)")->capture_default_str();
  codes->add_option("--vocab", o->vocab_size, "codebook size (model.vocab_size)")->capture_default_str();
  codes->add_option("--follow", o->follow, "probability of the class's successor token")->capture_default_str();
  codes->add_option("--seed", o->seed, "random seed of the chains (the distribution)")
      ->capture_default_str()
      ->check(seed_validator());
  codes->add_option("--first-index", o->first_index,
                    "index of the first sequence: a held-out split uses the same seed and e.g. 1000000")
      ->capture_default_str();

  auto* shapes = cmd->add_subcommand(
      "shapes", "Procedural images (coloured shapes on textured backgrounds) as an ImageFolder tree of PNGs");
  auto so = std::make_shared<ShapesOptions>();
  auto shapes_out = std::make_shared<std::string>();
  shapes->add_option("--out", *shapes_out, "folder to write (<class>/<index>.png, classes.txt, truth.jsonl)")
      ->required();
  shapes->add_option("--classes", so->classes, "classes (1..10)")->capture_default_str();
  shapes->add_option("--per-class", so->per_class, "images per class")->capture_default_str();
  shapes->add_option("--size", so->size, "image side in pixels (16..1024)")->capture_default_str();
  shapes->add_option("--seed", so->seed, "random seed")->capture_default_str()->check(seed_validator());

  return [cmd, codes, o, out, shapes, so, shapes_out]() -> int {
    if (!cmd->parsed()) return -1;
    refuse_launcher("make-dataset");
    if (shapes->parsed()) {
      so->validate();
      write_shapes_dataset(*shapes_out, *so);
      std::cout << *shapes_out << ": " << so->classes * so->per_class << " images of " << so->size << "x"
                << so->size << ", " << so->classes << " classes (classes.txt, truth.jsonl)\n";
      return 0;
    }
    if (!codes->parsed()) return -1;
    {
      // Only an earlier synthetic dataset is replaced: not extracted codes, weights or anything else.
      std::error_code ec;
      if (std::filesystem::exists(*out, ec)) {
        bool synthetic = false;
        try {
          synthetic = CodeDataset(*out).info().tokenizer.rfind("none (synthetic", 0) == 0;
        } catch (const Error&) {
        }
        AIM_CHECK(synthetic, "--out ", *out, ": exists and is not a finished synthetic code dataset (extracted codes, "
                  "an unfinished extraction or another file); it is not replaced\n---> HINT: give another path, or "
                  "remove it first");
      }
    }
    write_synthetic_codes(*out, *o);
    std::cout << *out << ": " << o->classes * o->per_class << " sequences of " << o->tokens << " codes, "
              << o->classes << " classes; a perfect model's loss is "
              << synthetic_codes_entropy(*o) << " nats/token\n";
    return 0;
  };
}

}  // namespace aim::cli
