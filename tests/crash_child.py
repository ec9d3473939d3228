"""Run by tests/test_crash_safety.py as a real child process, which the test SIGKILLs at a chosen point.

    python crash_child.py save MODE FOLDER MARKER
        Save the grown model (``new_model()``) over FOLDER, which holds the previous version (``old_model()``).
        MODE picks where the child stops (writes MARKER, then sleeps until killed):
        ``write``: in the middle of writing the temporary folder (weights and tokenizer written, lineage not);
        ``written``: right after the complete temporary folder was renamed ``.new-`` (FOLDER not touched yet);
        ``swap``: right after FOLDER was renamed away (the window in which FOLDER does not exist);
        ``swap-kept``: one step later, after ``checkpoints`` moved into the new version but ``runs`` did not;
        ``loop``: never: saves the new and the old version in turn, forever (MARKER after the first save).

    python crash_child.py train MARKER STOP [hf-incr increment flags...]
        Run ``hf-incr increment`` with the flags. STOP is ``none``, ``PHASE:step:N`` (stop after optimizer step N of
        PHASE, its checkpoints up to N already written) or ``PHASE:checkpoint:N`` (stop while writing checkpoint N:
        weights and optimizer written, trainer_state.json not). Each phase's checkpoint to resume from (or null) is
        appended to ``MARKER.resumed``, one JSON line per phase. The cached warm-up takes ``CACHED_BATCH_SIZE`` rows a
        step (``hf_incr.trainer.CACHED_BATCH_SIZE``, set here), so that its phase has several steps and checkpoints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

WAIT_S = 600  # the test kills the child long before
CACHED_BATCH_SIZE = 4  # rows per step of the cached warm-up in the crash tests (the product's default is 128)


def _stop_here(marker: str) -> None:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(WAIT_S)
    raise SystemExit("crash_child: was not killed")


def old_model():
    from text_models import tiny_bert

    from hf_incr.lineage import append_record

    model = tiny_bert(["refund", "delivery"], seed=1)
    # A fixed date: saving the same model in two processes must give the same bytes.
    append_record(model, {"kind": "base", "labels_added": ["refund", "delivery"], "label_ids": [0, 1],
                          "num_labels": 2, "data_fingerprint": "base-data", "date": "2026-01-01T00:00:00+00:00"})
    return model


def new_model():
    from hf_incr import add_labels
    from hf_incr.lineage import append_record

    model = old_model()
    add_labels(model, ["login"], init="zeros")
    append_record(model, {"kind": "increment", "labels_added": ["login"], "label_ids": [2], "num_labels": 3,
                          "data_fingerprint": "new-data", "date": "2026-01-02T00:00:00+00:00"})
    return model


def save(mode: str, folder: str, marker: str) -> None:
    from text_models import tokenizer

    from hf_incr import saving

    target = Path(folder)
    tok = tokenizer()
    if mode == "write":
        real = saving.write_lineage_file

        def write_lineage_file(directory, lineage):
            _stop_here(marker)  # model.safetensors and the tokenizer are in the temporary folder by now
            return real(directory, lineage)

        saving.write_lineage_file = write_lineage_file
    elif mode in ("written", "swap", "swap-kept"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            result = real_replace(src, dst, *args, **kwargs)
            if mode == "written" and Path(src).name.startswith(f".{target.name}.tmp-"):
                _stop_here(marker)
            if mode == "swap" and Path(src) == target:
                _stop_here(marker)
            if mode == "swap-kept" and Path(src).name == "checkpoints" and Path(src).parent.name.startswith(
                f".{target.name}.old-"
            ):
                _stop_here(marker)
            return result

        os.replace = replace  # saving.py calls os.replace at run time
    elif mode == "loop":
        models = [new_model(), old_model()]
        saving.save_increment(models[0], target, tok)
        Path(marker).write_text(str(os.getpid()))
        for i in range(10**6):
            saving.save_increment(models[(i + 1) % 2], target, tok)
        return
    saving.save_increment(new_model(), target, tok)
    raise SystemExit("crash_child: the save finished without stopping")


def train(marker: str, stop: str, argv: list[str]) -> None:
    import transformers
    from transformers.trainer_callback import DefaultFlowCallback

    import hf_incr.trainer
    from hf_incr.cli import main

    hf_incr.trainer.CACHED_BATCH_SIZE = CACHED_BATCH_SIZE
    # Where each phase resumed from (a finished run deletes its checkpoints, so the test reads it here).
    train_phase = transformers.Trainer.train

    def record_resume(self, *args, resume_from_checkpoint=None, **kwargs):
        with open(f"{marker}.resumed", "a") as out:
            out.write(json.dumps({"phase": Path(self.args.output_dir).name, "resume": resume_from_checkpoint}) + "\n")
        return train_phase(self, *args, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    transformers.Trainer.train = record_resume

    if stop != "none":
        phase, where, number = stop.split(":")
        number = int(number)
        if where == "step":
            on_step_end = DefaultFlowCallback.on_step_end

            def stop_after_step(self, args, state, control, **kwargs):
                result = on_step_end(self, args, state, control, **kwargs)
                if Path(args.output_dir).name == phase and state.global_step == number:
                    _stop_here(marker)
                return result

            DefaultFlowCallback.on_step_end = stop_after_step
        elif where == "checkpoint":
            save_rng_state = transformers.Trainer._save_rng_state

            def stop_in_checkpoint(self, output_dir):
                if Path(output_dir).parent.name == phase and Path(output_dir).name == f"checkpoint-{number}":
                    _stop_here(marker)
                return save_rng_state(self, output_dir)

            transformers.Trainer._save_rng_state = stop_in_checkpoint
        else:
            raise SystemExit(f"crash_child: unknown stop {stop!r}")
    code = main(["increment", *argv])
    if stop != "none":
        raise SystemExit(f"crash_child: the run finished (code {code}) without stopping at {stop}")
    raise SystemExit(code)


if __name__ == "__main__":
    if sys.argv[1] == "save":
        save(*sys.argv[2:5])
    elif sys.argv[1] == "train":
        train(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        raise SystemExit(f"crash_child: unknown command {sys.argv[1]!r}")
