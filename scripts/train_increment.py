# /// script
# dependencies = ["hf_incr"]
# ///
"""Add the new labels of a data set to a trained classifier and train the increment (runs under accelerate launch).

    # one process (CPU or one GPU)
    python scripts/train_increment.py --model_name_or_path outputs/base --train_file new.jsonl \
        --eval_file test.jsonl --output_dir outputs/grown --replay_per_label 10

    # several GPUs (or 2 CPU processes with --use_cpu)
    accelerate launch --multi_gpu --num_processes 2 scripts/train_increment.py --model_name_or_path outputs/base \
        --train_file new.jsonl --output_dir outputs/grown

    # from a saved config
    python scripts/train_increment.py --config increment.yaml
"""

from hf_incr.cli import parse_args, run_command


def main(script_args, recipe_args, training_args):
    return run_command("increment", script_args, recipe_args, training_args)


if __name__ == "__main__":
    main(*parse_args())
