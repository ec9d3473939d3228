"""Run by tests/test_distributed.py, alone or under `accelerate launch --multi_gpu --num_processes 2` on CPU.

Trains one increment of a tiny BERT (dropout off, fixed seed) through the full-model fine-tuning phase and writes,
per rank, the final weights and the training loss.
"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from text_models import text_dataset, tiny_bert, tokenizer, training_args

from hf_incr import IncrementConfig, train_increment


def main(out: str, batch_size: int, accumulation: int, phase: str) -> None:
    out_dir = Path(out)
    model = tiny_bert(["refund", "delivery", "login"], dropout=0.0)
    if phase == "warmup":
        config = IncrementConfig(warmup_epochs=2, init="zeros", cached_batch_size=batch_size, closed_form_head=False)
    else:
        config = IncrementConfig(warmup_epochs=0, init="zeros", finetune_layers=-1, finetune_epochs=2,
                                 closed_form_head=False, finetune_increments=True,
                                 finetune_learning_rate=1e-3, layer_lr_decay=0.9)
    args = training_args(
        out_dir, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        dataloader_drop_last=False,
    )
    result = train_increment(model, tokenizer(), text_dataset(["repair"], 16), config=config, args=args, save=False)
    rank = args.process_index
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "world_size": args.world_size, "train_loss": result.train_metrics[phase]["train_loss"],
        "num_labels": model.config.num_labels,
    }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
