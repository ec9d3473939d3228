"""The Trainer checkpoints of an increment's phases, and which one a rerun resumes from.

Each phase writes its checkpoints under ``<output_dir>/checkpoints/<phase>`` beside a small run file
(``hf_incr_run.json``: labels, a digest of the training rows and of the trained parameters' names), so a resume never
continues another run's checkpoints, and a checkpoint whose writing was killed is never resumed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from transformers import TrainingArguments
from transformers.utils import logging

from .errors import ConfigError, HfIncrError, causes
from .faults import fault_error, inside, megabytes, write_fault
from .saving import CHECKPOINTS_DIRNAME, recover_interrupted_save

logger = logging.get_logger(__name__)

# Trainer writes trainer_state.json last in a checkpoint (after weights, optimizer and RNG states).
TRAINER_STATE = "trainer_state.json"
RUN_FILE = "hf_incr_run.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def parse_resume(value) -> bool | str | None:
    """``TrainingArguments.resume_from_checkpoint`` (a bool, a path, or a string from a CLI / config file) as
    ``None`` (start afresh), ``True`` (each phase's last complete checkpoint) or a checkpoint path."""
    if value is None or value is False or str(value).strip().lower() in ("false", "none", ""):
        return None
    if value is True or str(value).strip().lower() == "true":
        return True
    return str(value)


def phase_checkpoint_dir(output_dir: str | os.PathLike, phase: str) -> Path:
    """Where a phase of the run writing ``output_dir`` keeps its checkpoints."""
    return Path(output_dir) / CHECKPOINTS_DIRNAME / phase


def resume_from(args: TrainingArguments, phase: str, run: dict | None = None) -> str | None:
    """The checkpoint this phase resumes from (``None``: start afresh), from ``args.resume_from_checkpoint``.

    ``True`` resumes every phase from its own last *complete* checkpoint, if it has one (a checkpoint whose writing
    was killed is skipped); a path resumes the phase whose checkpoint folder it points into. ``run`` (see
    :func:`phase_run`) is stored beside the checkpoints: resuming another run's checkpoints is refused.
    A phase that starts afresh deletes its folder's old checkpoints, so a later resume cannot pick them up.
    """
    folder = phase_checkpoint_dir(args.output_dir, phase)
    resume = parse_resume(args.resume_from_checkpoint)
    if isinstance(resume, str) and not Path(resume).resolve().is_relative_to(folder.resolve()):
        resume = None  # a checkpoint of another phase: this one starts afresh
    if str(getattr(args.save_strategy, "value", args.save_strategy)) == "no":
        run = None  # no checkpoints to tell apart: write no run file
    if resume is not None and args.should_save:
        # A save killed between its renames leaves `output_dir`, checkpoints included, in a sibling folder.
        recover_interrupted_save(args.output_dir)
    return checkpoint_to_resume(folder, resume, run, main_process=args.should_save)


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether Trainer finished writing this checkpoint: its ``trainer_state.json`` (written last) parses."""
    try:
        state = json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def remove_incomplete_checkpoints(folder: str | os.PathLike) -> list[str]:
    """Delete the Trainer checkpoints under ``folder/<phase>/`` that Trainer did not finish writing (see
    :func:`is_complete_checkpoint`): a full disk stopped them, and a resumed run would skip them anyway. Returns
    their names as ``phase/checkpoint-N``."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for phase in sorted(p for p in folder.iterdir() if p.is_dir()):
        for checkpoint in sorted(p for p in phase.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)):
            if not is_complete_checkpoint(checkpoint):
                shutil.rmtree(checkpoint, ignore_errors=True)
                removed.append(f"{phase.name}/{checkpoint.name}")
    return removed


def checkpoint_to_resume(
    phase_dir: str | os.PathLike,
    resume: str | bool,
    run: dict | None = None,
    *,
    main_process: bool = True,
) -> str | None:
    """The checkpoint a phase resumes from, or ``None`` to start it afresh.

    Args:
        phase_dir: The phase's checkpoint folder (``output_dir/checkpoints/<phase>``).
        resume: ``True`` for the last complete checkpoint in ``phase_dir`` (a checkpoint whose writing was killed is
            skipped and deleted), or the path of one checkpoint; ``None``/``False`` to start afresh.
        run: What identifies the run (labels, data); stored in ``phase_dir`` so a resume from another run's
            checkpoints is refused instead of silently continuing them. ``None`` skips the check.
        main_process: Only the main process deletes folders and writes the run file (every process reads).
    """
    phase_dir = Path(phase_dir)
    run_file = phase_dir / RUN_FILE
    resume = parse_resume(resume)
    if resume is None:
        if main_process:
            # Old checkpoints would otherwise be taken for this run's on a later resume.
            stale = _checkpoints(phase_dir)
            if stale:
                logger.warning("Starting the %s phase afresh: deleting its old checkpoints %s.", phase_dir.name,
                               [p.name for p in stale])
                for folder in stale:
                    shutil.rmtree(folder, ignore_errors=True)
            _write_run_file(run_file, run)
        return None
    if resume is True:
        checkpoints = _checkpoints(phase_dir)
        complete = [p for p in checkpoints if is_complete_checkpoint(p)]
        chosen = complete[-1] if complete else None
        partial = [p for p in checkpoints if chosen is None or _step(p) > _step(chosen)]
        partial = [p for p in partial if not is_complete_checkpoint(p)]
        if partial:
            logger.warning("Skipping %s in %s: their writing was interrupted (no complete %s).",
                           [p.name for p in partial], phase_dir, TRAINER_STATE)
            if main_process:
                for folder in partial:
                    shutil.rmtree(folder, ignore_errors=True)
    else:
        chosen = Path(resume)
        if not is_complete_checkpoint(chosen):
            raise ConfigError(
                f"`resume_from_checkpoint={resume}` is not a complete Trainer checkpoint: expected a readable "
                f"{TRAINER_STATE} (Trainer writes it last), found it missing or truncated. Its writing was probably "
                "interrupted: pass "
                f"`resume_from_checkpoint=True` to resume from the last complete checkpoint in {phase_dir}."
            )
    if chosen is None:
        if main_process:
            _write_run_file(run_file, run)
        return None
    _check_same_run(run_file, run, phase_dir)
    logger.info("Resuming the %s phase from %s.", phase_dir.name, chosen)
    return str(chosen)


def phase_run(id2label: dict, texts, labels, trainable) -> dict:
    """What makes a phase's checkpoints this run's: the labels, a digest of the training rows, and the names of the
    parameters it trains (a checkpoint of another trainable set would load partly, or not at all, without an error)."""
    rows = json.dumps([list(texts), list(labels)], ensure_ascii=False, default=str)
    names = sorted(trainable)
    return {
        "labels": [id2label[i] for i in sorted(id2label)],
        "rows": len(texts),
        "data_sha256": hashlib.sha256(rows.encode("utf-8")).hexdigest()[:16],
        "trainable_parameters": len(names),
        "trainable_sha256": hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16],
    }


def _checkpoints(phase_dir: Path) -> list[Path]:
    if not phase_dir.is_dir():
        return []
    found = [p for p in phase_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=_step)


def _step(path: Path) -> int:
    return int(_CHECKPOINT.match(path.name).group(1))


def _write_run_file(run_file: Path, run: dict | None) -> None:
    if run is None:
        return
    run_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = run_file.with_name(f".{run_file.name}.tmp-{uuid.uuid4().hex[:8]}")
    temporary.write_text(json.dumps(run, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, run_file)  # other processes may read it right now


def _check_same_run(run_file: Path, run: dict | None, phase_dir: Path) -> None:
    if run is None or not run_file.is_file():
        return  # checkpoints of an older hf_incr, or a caller without an identity: nothing to compare
    stored = json.loads(run_file.read_text(encoding="utf-8"))
    differing = sorted(k for k in set(stored) | set(run) if stored.get(k) != run.get(k))
    if differing:
        changes = "; ".join(f"{k}: {_short(stored.get(k))} there, {_short(run.get(k))} now" for k in differing)
        raise ConfigError(
            f"The checkpoints in {phase_dir} were written by another run ({changes}). Resume with the same model, "
            "labels and data, drop `resume_from_checkpoint` to start afresh (the old checkpoints are then deleted), "
            "or use another `output_dir`."
        )


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def training_faults(output_dir, model=None):
    """The Trainer phases of a run: a full disk (or a file-size limit, or a checkpoint folder that vanished or became
    a file) while Trainer writes a checkpoint under ``output_dir/checkpoints``, or datasets a cache file, becomes a
    :class:`DiskFullError` / :class:`SaveError`. The checkpoints whose writing failed are deleted: they free the
    space they took, and a resumed run would skip them anyway."""
    try:
        yield
    except HfIncrError:
        raise
    except Exception as error:
        kind = write_fault(error, under=output_dir)
        if kind is None:
            raise
        out = Path(output_dir)
        checkpoints = out / "checkpoints"
        removed = remove_incomplete_checkpoints(checkpoints)
        named = next((c.filename for c in causes(error) if isinstance(c, OSError) and getattr(c, "filename", None)),
                     None)
        path = Path(os.fsdecode(named)) if named else checkpoints
        what = "the Trainer checkpoints of this run" if not named or inside(named, out) else "a cache file"
        kept = (f"Nothing saved before was changed: {str(out)!r} holds no model of this run (a model saved there "
                "before is as it was)"
                + (f"; the incomplete checkpoint(s) {removed} were deleted." if removed else "."))
        size = megabytes(model) if model is not None else None
        needs = f" (a checkpoint of this model takes about {3 * size} MB: weights and optimizer state)" if size else ""
        resume = ("then rerun; with checkpoints, add `--resume_from_checkpoint true` (Python: "
                  "`TrainingArguments(resume_from_checkpoint=True)`) to continue from the last complete one, or pass "
                  "`--save_strategy no` to write none.")
        fix = (f"Free space on that disk{needs} or raise the file-size limit (`ulimit -f`), {resume}"
               if kind == "full" else f"Check that {str(out)!r} is a folder that can be written, {resume}")
        raise fault_error(kind, error, what=what, path=path, folder=out, kept=kept, fix=fix) from error
