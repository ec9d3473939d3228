"""Sharing a grown model on the Hugging Face Hub, without ever losing local work.

:func:`push_to_hub` saves first (or takes a folder that :func:`~hf_incr.saving.save_increment` wrote), rewrites the
card with the repo id, checks that the card and ``lineage.json`` describe the lineage in ``config.json``, and only
then uploads the folder in one commit (``HfApi.upload_folder``). Whatever goes wrong on the way to the Hub (no token,
no network, an HTTP error, a broken connection, in the regular upload or in the LFS/Xet upload of the weights), the
folder stays complete and a :class:`~hf_incr.errors.HubPushError` says where it is and how to retry. Retrying
uploads the same files again: the lineage lives in ``config.json``, so nothing is appended twice, and files the Hub
already holds (including large files uploaded before the failure) are skipped.

A push mirrors the folder for hf_incr's own files: the replay memory (``replay_memory/``), every head's files (and
the names earlier versions wrote; :func:`hf_incr.heads.head_files`), ``lineage.json`` and the card's plot are deleted
on the Hub, in the same commit, when the saved folder no longer has them, so the Hub never serves a stale replay
memory or head beside a new model. No other file on the Hub is ever deleted (see :func:`mirrored_patterns`).

:func:`hf_incr.load_model` reads an extra head's file from the commit the model's weights came from (transformers
resolves ``revision`` once and records it as ``config._commit_hash``), so a commit of this module's push (which
carries model and head together, or removes a stale head in the same commit) is read as a whole, even while others
push to that branch.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, get_token, validate_repo_id
from transformers import PretrainedConfig
from transformers.utils import logging

from .errors import HubPushError, causes
from .heads import HEADS, head_files
from .lineage import LINEAGE_FILENAME, get_lineage, write_lineage_file
from .model_card import CARD_FILENAME, PLOT_FILENAME, card_has_lineage, remote_code, write_model_card
from .replay import REPLAY_DIRNAME
from .saving import KEPT_ENTRIES, save_increment

logger = logging.get_logger(__name__)

# Trainer checkpoints and logs kept in the output folder are not part of the shared model.
IGNORE_PATTERNS = [f"{name}/*" for name in KEPT_ENTRIES]
RETRY_CLI = "hf-incr push --model_name_or_path {folder} --repo_id {repo_id}"
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
# huggingface_hub wraps a failed LFS upload: RuntimeError("Error while uploading '<path>' to the Hub.") from the cause.
_LARGE_FILE = re.compile(r"Error while uploading '([^']+)' to the Hub")
_NETWORK = re.compile("Connect|Timeout|Protocol|Read|Write|Network")  # names of httpx2's network errors
# A push the Hub rate-limits (HTTP 429) is tried again after the `Retry-After` it asks for, when that is at most
# RATE_LIMIT_WAIT_S, RATE_LIMIT_TRIES times in all; a longer wait is an error that says when to retry.
RATE_LIMIT_WAIT_S = 60
RATE_LIMIT_TRIES = 3
_DEFAULT_RETRY_AFTER_S = 5  # a 429 that names no wait


def push_to_hub(
    folder_or_model,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    tokenizer=None,
    save_dir: str | os.PathLike | None = None,
    replay=None,
    heads=None,
    endpoint: str | None = None,
    push_statistics: bool = True,
    **card_data_kwargs: Any,
):
    """Save locally, then upload model, tokenizer, config (with the lineage), ``lineage.json``, card, plot and (if
    kept) the replay memory to ``repo_id`` in one commit.

    Args:
        folder_or_model: A folder written by :func:`~hf_incr.saving.save_increment` (or any ``save_pretrained``
            folder), or a model, which is saved first (with ``tokenizer``, ``replay`` and ``heads``) to ``save_dir``.
        repo_id: ``"namespace/name"`` (a bare name goes to the token owner's namespace).
        token: A Hub token with write access. Default: ``HF_TOKEN`` or the one saved by ``hf auth login``. It is
            never written to a file, a log or an exception.
        private: ``True`` makes the repository private: a new one is created private, and an existing public one
            is switched to private (with a warning). ``False`` (the default) creates a public repository but never
            makes an existing private one public: that stays private (change it on the Hub or with
            ``HfApi.update_repo_settings(repo_id, private=False)``).
        revision: Branch to commit to; created from ``main`` when it does not exist.
        commit_message: Default: names the labels the last increment added.
        tokenizer, replay, heads: Saved with a model (ignored for a folder); ``heads`` as ``IncrementResult.heads``.
        save_dir: Where a model is saved. Default: ``./<repo name>``; an existing folder is only replaced when it
            holds a saved model (a ``config.json``).
        endpoint: The Hub URL. Default: ``HF_ENDPOINT``, else huggingface.co.
        push_statistics: Upload the heads' statistics files (what the next increment needs, not inference).
            ``False`` keeps them local only, and removes older ones from the Hub in the same commit.
        **card_data_kwargs: Extra card metadata (``license``, ``language``, ``datasets``, ...).

    Returns:
        The ``huggingface_hub.CommitInfo`` of the upload (``.commit_url``, ``.oid``).

    Raises:
        HubPushError: The upload failed; the local folder is complete and the message says how to retry.
    """
    folder = _save_locally(folder_or_model, repo_id, tokenizer, save_dir, replay, heads)
    config = _read_config(folder)
    _prepare_folder(folder, config, repo_id, card_data_kwargs)

    token = token or get_token()
    if not token:
        raise _push_error(
            folder, repo_id, "no Hugging Face token was found (pass `token=`, set `HF_TOKEN`, or run `hf auth login`)",
            revision=revision,
        )
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token, library_name="hf_incr")
    commit, repo_id = _commit_rate_limited(api, folder, config, repo_id, endpoint=endpoint, token=token,
                                           private=private, revision=revision, commit_message=commit_message,
                                           push_statistics=push_statistics, card_data_kwargs=card_data_kwargs)
    logger.info("Pushed %s to %s (%s)", folder, repo_id, commit.commit_url)
    _pin_card(api, folder, config, repo_id, commit, revision, card_data_kwargs)
    return commit


def _commit_rate_limited(api: HfApi, folder: Path, config, repo_id: str, *, endpoint: str, token: str,
                         revision: str | None, **options):
    """:func:`_commit`, tried again after the wait a rate limit (HTTP 429) asks for when that is short
    (``RATE_LIMIT_WAIT_S``, ``RATE_LIMIT_TRIES`` tries in all); any other failure is a :class:`HubPushError`."""
    attempt = 1
    while True:
        try:
            return _commit(api, folder, config, repo_id, revision=revision, **options)
        except KeyboardInterrupt:
            logger.warning(_retry_hint(folder, repo_id, "The push was interrupted.", revision))
            raise
        except Exception as error:
            wait = _retry_after(error)
            if wait is not None and wait <= RATE_LIMIT_WAIT_S and attempt < RATE_LIMIT_TRIES:
                # Refused before anything was committed (a commit is all or nothing): the same push again, which
                # skips the files the Hub already holds, after the wait the Hub asked for.
                attempt += 1
                logger.warning("The Hub asks this push to wait %d s (HTTP 429); trying again then (%d of %d).", wait,
                               attempt, RATE_LIMIT_TRIES)
                time.sleep(wait)
                continue
            raise _push_error(
                folder, repo_id, _describe(error, endpoint), token=token, status_code=_status(error),
                revision=revision,
            ) from None


def _commit(api: HfApi, folder: Path, config, repo_id: str, *, private: bool, revision: str | None,
            commit_message: str | None, push_statistics: bool, card_data_kwargs: dict):
    """The repo made (and private, and the branch, as asked), then the folder uploaded in one commit that also deletes
    hf_incr's files the folder no longer has; returns the commit and the repo id (a bare name resolved)."""
    lineage = get_lineage(config)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    if repo_url.repo_id != repo_id:  # a bare name resolved to the token owner's namespace
        repo_id = repo_url.repo_id
        _prepare_folder(folder, config, repo_id, card_data_kwargs)
    if private:
        _make_private(api, repo_id)
    if revision and revision != constants.DEFAULT_REVISION and not revision.startswith("refs/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with warnings.catch_warnings():
        # The replay memory is a parquet file: it belongs in this model repository.
        warnings.filterwarnings("ignore", message=".*data file.*", category=UserWarning)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or default_commit_message(lineage),
            commit_description=_commit_description(lineage),
            revision=revision,
            ignore_patterns=IGNORE_PATTERNS + ([] if push_statistics else statistics_files()),
            delete_patterns=mirrored_patterns(),
        )
    return commit, repo_id


def _pin_card(api: HfApi, folder: Path, config, repo_id: str, commit, revision, card_data_kwargs) -> None:
    """A model whose head ships code: its card's loading lines pinned to the commit just made, in a second commit that
    changes only the card (so that `trust_remote_code=True` is used at a reviewed revision). The push has succeeded
    whatever happens here; a failure is a warning."""
    if remote_code(folder, config) is None:
        return
    try:
        card = write_model_card(config, folder, model_id=repo_id, revision=commit.oid, **card_data_kwargs)
        api.upload_file(path_or_fileobj=str(card), path_in_repo=CARD_FILENAME, repo_id=repo_id, revision=revision,
                        commit_message=f"Pin the card's loading lines to {commit.oid[:7]}")
    except Exception as error:  # the model is on the Hub; only the card's pin is missing
        logger.warning("Pushed, but the card's loading lines could not be pinned to %s (%s); they name the branch.",
                       commit.oid, type(error).__name__)


def mirrored_patterns() -> list[str]:
    """hf_incr's own files (of every head registered now): deleted on the Hub when the pushed folder lacks them.
    Matched from the repo root: a user's other files (and these names in subfolders) are never deleted."""
    return [f"{REPLAY_DIRNAME}/*", *head_files(), LINEAGE_FILENAME, PLOT_FILENAME]


def statistics_files() -> list[str]:
    """The heads' files that only the next increment reads (left out by ``push_statistics=False``)."""
    return [name for cls in HEADS.values() for name in cls.statistics_files]


def push_saved_model(folder: str | os.PathLike, args_or_repo_id, **kwargs):
    """Push a folder that an increment just saved, as the recipe does after saving.

    ``args_or_repo_id`` is either a repo id, or ``TrainingArguments``: then nothing happens unless
    ``args.push_to_hub``, and ``hub_model_id`` (default: the output folder's name), ``hub_token``,
    ``hub_private_repo`` and ``hub_revision`` are used. Returns the ``CommitInfo``, or ``None`` when not pushing.
    """
    if isinstance(args_or_repo_id, str):
        return push_to_hub(folder, args_or_repo_id, **kwargs)
    args = args_or_repo_id
    if not getattr(args, "push_to_hub", False):
        return None
    options = {
        "token": getattr(args, "hub_token", None),
        "private": bool(getattr(args, "hub_private_repo", None)),
        "revision": getattr(args, "hub_revision", None),
        **kwargs,
    }
    repo_id = getattr(args, "hub_model_id", None) or Path(folder).resolve().name
    return push_to_hub(folder, repo_id, **options)


def default_commit_message(lineage: list[dict[str, Any]]) -> str:
    """``"hf_incr increment 2: add labels repair_booking, complaint"`` (names clipped to keep a one-line summary)."""
    if not lineage:
        return "Upload text classifier (hf_incr)"
    last = lineage[-1]
    names = list(last.get("labels_added") or [])
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    k = last.get("increment", len(lineage) - 1)
    if last.get("kind") == "base":
        return f"hf_incr base classifier: labels {shown}"
    if not names:
        return f"hf_incr increment {k}: more training, no new labels"
    return f"hf_incr increment {k}: add label{'s' if len(names) != 1 else ''} {shown}"


# -- helpers ---------------------------------------------------------------------------------------------------------


def _save_locally(folder_or_model, repo_id, tokenizer, save_dir, replay, heads) -> Path:
    if isinstance(folder_or_model, (str, os.PathLike)):
        folder = Path(folder_or_model)
        if not (folder / "config.json").is_file():
            raise HubPushError(
                f"{str(folder)!r} is not a saved model folder (it has no config.json). Pass a folder written by "
                "`save_increment` / `save_pretrained`, or the model itself with `save_dir=`.",
                folder=folder,
                repo_id=repo_id,
            )
        return folder
    if save_dir is None:
        try:  # the repo's name becomes a local folder: `org/..` must not name the working folder's parent
            validate_repo_id(repo_id)
        except HFValidationError as error:
            raise HubPushError(f"{repo_id!r} is not a valid Hub repo id: {error}", repo_id=repo_id) from None
    folder = Path(save_dir) if save_dir is not None else Path(repo_id.split("/")[-1])
    if folder.exists() and any(folder.iterdir()) and not (folder / "config.json").is_file():
        raise HubPushError(
            f"`save_dir` {str(folder)!r} exists and does not hold a saved model; nothing was saved or pushed. Pass "
            "another `save_dir`.",
            folder=folder,
            repo_id=repo_id,
        )
    return save_increment(folder_or_model, folder, tokenizer, replay=replay, heads=heads)


def _read_config(folder: Path):
    return PretrainedConfig.from_json_file(str(folder / "config.json"))


def _prepare_folder(folder: Path, config, repo_id: str, card_data_kwargs: dict) -> None:
    """Make the folder's card and ``lineage.json`` match ``config.json`` (the lineage's home) before uploading."""
    lineage = get_lineage(config)
    lineage_path = folder / LINEAGE_FILENAME
    try:
        on_disk = json.loads(lineage_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        on_disk = None
    if on_disk != lineage:
        write_lineage_file(folder, lineage)
    card = write_model_card(config, folder, model_id=repo_id, **card_data_kwargs)
    if not card_has_lineage(card.read_text(encoding="utf-8"), config):
        raise _push_error(folder, repo_id, f"{CARD_FILENAME} does not describe the lineage in config.json")


def _commit_description(lineage: list[dict[str, Any]]) -> str:
    if not lineage:
        return "Pushed with hf_incr."
    after = ((lineage[-1].get("metrics") or {}).get("after")) or {}
    parts = [f"{len(lineage)} increment(s) in the lineage, {lineage[-1].get('num_labels', '?')} labels."]
    scores = [f"{name} {100 * after[key]:.1f}%" for key, name in
              (("accuracy", "all"), ("old_accuracy", "old"), ("new_accuracy", "new"))
              if isinstance(after.get(key), (int, float))]
    if scores:
        parts.append("After this increment: " + ", ".join(scores) + ".")
    return " ".join(parts)


def _make_private(api: HfApi, repo_id: str) -> None:
    """``private=True`` on an existing public repository: switch it to private, and say so."""
    if api.repo_info(repo_id).private:
        return
    api.update_repo_settings(repo_id, private=True)
    message = f"The Hub repository {repo_id!r} was public; it was made private because `private=True` was passed."
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def _status(error: BaseException) -> int | None:
    for cause in causes(error):
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if status is not None:
            return status
    return None


def _retry_after(error: BaseException) -> int | None:
    """The seconds a rate-limited (HTTP 429) request should wait before it is tried again (``None``: no 429)."""
    for cause in causes(error):
        response = getattr(cause, "response", None)
        if getattr(response, "status_code", None) != 429:
            continue
        value = str((getattr(response, "headers", None) or {}).get("Retry-After") or "").strip()
        if value.isdigit():
            return int(value)
        try:  # an HTTP date
            moment = email.utils.parsedate_to_datetime(value)
            return max(0, math.ceil(moment.timestamp() - time.time()))
        except (TypeError, ValueError, IndexError):
            return _DEFAULT_RETRY_AFTER_S
    return None


def _describe(error: BaseException, endpoint: str) -> str:
    """A short reason for a failed push (no request objects, headers or token)."""
    reason = _describe_one(_innermost(error), endpoint)
    large = next((found for cause in causes(error) if (found := _LARGE_FILE.search(str(cause)))), None)
    if large:
        reason += f", while uploading the large file {large.group(1)!r} (LFS)"
    return reason


def _innermost(error: BaseException) -> BaseException:
    """The HTTP or network error under huggingface_hub's wrappers, else ``error`` itself."""
    for cause in causes(error):
        if getattr(getattr(cause, "response", None), "status_code", None) is not None:
            return cause
        if isinstance(cause, (LocalTokenNotFoundError, OfflineModeIsEnabled)) or _NETWORK.search(type(cause).__name__):
            return cause
    return error


def _describe_one(error: BaseException, endpoint: str) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    server = ""
    if isinstance(error, HfHubHTTPError):
        server = getattr(error, "server_message", None) or ""
    if isinstance(error, LocalTokenNotFoundError):
        return "no Hugging Face token was found (pass `token=`, set `HF_TOKEN`, or run `hf auth login`)"
    if isinstance(error, OfflineModeIsEnabled):
        return "huggingface_hub is in offline mode (`HF_HUB_OFFLINE=1`); unset it to push"
    if status == 401:
        return f"the Hub refused the token (HTTP 401{': ' + server if server else ''}); use a token with write access"
    if status == 403:
        return f"the token may not write to this repository (HTTP 403{': ' + server if server else ''})"
    if status == 429:
        wait = _retry_after(error)
        when = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + (wait or 0)))
        return (f"the Hub is rate-limiting this token (HTTP 429{': ' + server if server else ''}); it asks to wait "
                f"{wait} s, so retry after {when}")
    if status is not None and status >= 500:
        return f"the Hub had a server error (HTTP {status}{': ' + server if server else ''}); try again later"
    if status is not None:
        return f"the Hub answered HTTP {status}{': ' + server if server else ''}"
    name = type(error).__name__
    if "Connect" in name or "Timeout" in name:
        return f"could not reach {endpoint} ({name})"
    if "Protocol" in name or "Read" in name or "Write" in name or "Network" in name:
        return f"the connection to {endpoint} broke during the upload ({name})"
    return f"{name}: {error}"


def _retry_hint(folder: Path, repo_id: str, reason: str, revision: str | None = None) -> str:
    python_extra = f", revision={revision!r}" if revision else ""
    cli_extra = f" --hub_revision {revision}" if revision else ""
    return (
        f"{reason} The model is saved completely in {str(folder)!r}; nothing local was lost. Retry with "
        f"`hf_incr.push_to_hub({str(folder)!r}, {repo_id!r}{python_extra})` or "
        f"`{RETRY_CLI.format(folder=folder, repo_id=repo_id)}{cli_extra}`."
    )


def _push_error(
    folder, repo_id, reason: str, *, token: str | None = None, status_code: int | None = None, revision=None
):
    message = _retry_hint(
        Path(folder), repo_id, f"Pushing to the Hub repository {repo_id!r} failed: {reason}.", revision
    )
    return HubPushError(_scrub(message, token), folder=Path(folder), repo_id=repo_id, status_code=status_code)


def _scrub(text: str, token: str | None) -> str:
    """``text`` without the token (nor anything that looks like a Hub token or a bearer credential)."""
    if token:
        text = text.replace(token, "***")
    text = _BEARER.sub(r"\1***", text)
    return _TOKEN_LIKE.sub("hf_***", text)
