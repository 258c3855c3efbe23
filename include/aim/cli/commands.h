#pragma once
// Subcommands of the `aim` executable. Each registers its flags on the CLI11 app and returns
// the function that runs it; errors are thrown as aim::Error and reported by main().
#include <CLI/CLI.hpp>
#include <torch/types.h>

#include <functional>

namespace aim::cli {

using Runner = std::function<int()>;

/// `aim info <config.yaml | config.json | checkpoint dir>`: architecture, parameter counts,
/// memory estimates.
Runner add_info_command(CLI::App& app);

/// `aim extract-codes --data DIR|--list FILE --vq WEIGHTS --out FILE [--aug ...]`: tokenizes an
/// image collection into a code dataset (sharded under mpirun, resumable).
Runner add_extract_codes_command(CLI::App& app);

/// `aim sample --ckpt DIR [--class ...|--num-samples N] [--out grid.png] [--outdir D] [--npz F]
/// [--tokens F]`: class-conditional generation with guidance; `--from-tokens F` decodes saved
/// tokens instead.
Runner add_sample_command(CLI::App& app);

/// `aim train CONFIG [--set k=v ...] [--resume DIR|auto] [--init CKPT]`: stage-2 training on one
/// process or many (ranks from mpirun, srun or torchrun-style variables).
Runner add_train_command(CLI::App& app);

/// `aim train-vq CONFIG [--set k=v ...] [--resume DIR|auto] [--init VQ]`: stage-1 tokenizer
/// training on an image folder.
Runner add_train_vq_command(CLI::App& app);

/// `aim eval-vq --vq TOKENIZER --data DIR [--image-size S] [--json F]`: reconstruction PSNR and
/// codebook usage.
Runner add_eval_vq_command(CLI::App& app);

/// `aim eval-loss --ckpt CKPT --codes FILE [--recurrent] [--json F]`: held-out next-token loss,
/// by position and class, at the training and the decoder's positions; with --recurrent, the
/// step-by-step decoder's logits against the parallel pass.
Runner add_eval_loss_command(CLI::App& app);

/// `aim eval --samples S --ref R [--inception WEIGHTS]`: IS, FID, sFID, precision and recall as
/// ADM's evaluator computes them (.npz batches or image folders; features cached beside them).
Runner add_eval_command(CLI::App& app);

/// `aim make-dataset codes --out FILE ...` | `shapes --out DIR ...`: built-in datasets (synthetic
/// codes for aim train, procedural shape images).
Runner add_make_dataset_command(CLI::App& app);

/// `aim analyse-shapes DIR|PNG... [--json FILE]`: classifies shape images without learning;
/// accuracy and confusion against class folders or `_class<N>` file names, spread per class.
Runner add_analyse_shapes_command(CLI::App& app);

/// `--device auto|cpu|cuda|cuda:i` parsed and checked (a CUDA device must exist); `cuda` without
/// an index picks the local rank's GPU, `auto` (every command's default) that GPU when one is
/// visible, else the CPU.
torch::Device parse_device(const std::string& flag_value, int local_rank);

/// The check of every --seed flag: an integer from 0 to 2^64 - 1 (CLI11 would wrap -1 and clamp
/// larger values into an unsigned seed).
CLI::Validator seed_validator();

/// The help text of every command's --device flag.
inline constexpr const char* kDeviceHelp = "auto | cpu | cuda | cuda:<index> (auto: the local rank's GPU if any, else the CPU)";

}  // namespace aim::cli
