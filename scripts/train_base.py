# /// script
# dependencies = ["hf_incr"]
# ///
"""Train a first classifier (increment 0 of the lineage) on a data set's labels (runs under accelerate launch).

    python scripts/train_base.py --train_file train.jsonl --eval_file test.jsonl --output_dir outputs/base \
        --finetune_layers -1 --finetune_epochs 3 --finetune_learning_rate 1e-4 --replay_per_label 10

    accelerate launch --multi_gpu --num_processes 2 scripts/train_base.py --model_name_or_path bert-base-uncased \
        --train_file train.jsonl --output_dir outputs/base --finetune_layers -1
"""

from hf_incr.cli import parse_args, run_command


def main(script_args, recipe_args, training_args):
    return run_command("train-base", script_args, recipe_args, training_args)


if __name__ == "__main__":
    main(*parse_args())
