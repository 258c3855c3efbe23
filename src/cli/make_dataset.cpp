// `aim make-dataset KIND`: built-in datasets for trying the framework without ImageNet.
#include <iostream>

#include "aim/cli/commands.h"
#include "aim/core/error.h"
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
  codes->add_option("--seed", o->seed, "random seed of the chains (the distribution)")->capture_default_str();
  codes->add_option("--first-index", o->first_index,
                    "index of the first sequence: a held-out split uses the same seed and e.g. 1000000")
      ->capture_default_str();
  return [codes, o, out]() -> int {
    if (!codes->parsed()) return -1;
    write_synthetic_codes(*out, *o);
    std::cout << *out << ": " << o->classes * o->per_class << " sequences of " << o->tokens << " codes, "
              << o->classes << " classes; a perfect model's loss is "
              << synthetic_codes_entropy(*o) << " nats/token\n";
    return 0;
  };
}

}  // namespace aim::cli
