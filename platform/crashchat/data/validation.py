"""Validate annotation files and report every problem with its file, record index and field.

A file with any problem is reported and never half-loaded: :func:`load_annotations` either returns
every sample of every file or raises :class:`AnnotationError` listing all issues.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from crashchat.data.annotations import (
    AnnotationFile,
    AnnotationRecord,
    Sample,
    parse_file_name,
    read_json_list,
)
from crashchat.data.answer_parsing import check_answer_format
from crashchat.data.prompts import VIDEO_TAG, PromptCatalog, strip_video_tag
from crashchat.data.tasks import TASK_KEYS, get_task


@dataclass(frozen=True)
class Issue:
    """One problem found in an annotation file.

    Attributes:
        file: Path of the file.
        index: Record index in the file's list, or ``None`` for file-level problems.
        field: Field path within the record (``conversations[1].value``), or ``None``.
        message: What is wrong, in words a person understands.
    """

    file: str
    index: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.index is not None:
            where += f" record {self.index}"
        if self.field:
            where += f" field {self.field}"
        return f"{where}: {self.message}"


class AnnotationError(ValueError):
    """Raised when annotation files are invalid; ``issues`` lists every problem."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        shown = "\n".join(f"  - {i}" for i in issues[:20])
        more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
        super().__init__(f"{len(issues)} annotation problem(s):\n{shown}{more}")


@dataclass
class ValidationReport:
    """Outcome of validating a set of files (the ``crashchat data validate --json`` object)."""

    files: int = 0
    records: int = 0
    per_task: dict[str, int] = field(default_factory=dict)
    errors: list[Issue] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when no file had any problem."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """The JSON object documented for ``crashchat data validate --json``."""
        return {
            "valid": self.valid,
            "files": self.files,
            "records": self.records,
            "per_task": {k: self.per_task.get(k, 0) for k in TASK_KEYS},
            "errors": [asdict(e) for e in self.errors],
        }


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders expand to their ``crashchat_*.json`` annotation files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.glob("crashchat_*.json")) if p.is_dir() else [p])
    return out


def _field_path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def check_video_path(video: str, video_root: Path | None) -> str | None:
    """Return a message when ``video`` is unsafe or, with a root, missing; else ``None``."""
    if not video.strip():
        return "empty video path"
    if video.startswith(("/", "\\")) or PurePosixPath(video).is_absolute() or ":" in video[:3]:
        return f"video path {video!r} is absolute; it must be relative to the video root"
    normalized = posixpath.normpath(video.replace("\\", "/"))
    if normalized == ".." or normalized.startswith("../") or "/../" in f"/{video}/":
        return f"video path {video!r} escapes the video root ('..')"
    if video_root is not None and not (video_root / normalized).is_file():
        return f"video {video!r} not found under {video_root}"
    return None


def _structure_issues(
    rec: AnnotationRecord, video_root: Path | None, issue: Callable[[str | None, str], Issue]
) -> list[Issue]:
    """What is wrong with a record's turns, roles, videos and video tags (not its task)."""
    issues: list[Issue] = []
    turns = rec.conversations
    if len(turns) != 2:
        issues.append(
            issue("conversations", f"expected exactly 2 turns [human, gpt], got {len(turns)}")
        )
    for i, expected in enumerate(("human", "gpt")):
        if i < len(turns) and turns[i].from_ != expected:
            issues.append(
                issue(
                    f"conversations[{i}].from",
                    f"expected role {expected!r}, got {turns[i].from_!r}",
                )
            )
    if len(rec.video) != 1:
        issues.append(issue("video", f"expected exactly one video, got {len(rec.video)}"))
    for i, video in enumerate(rec.video):
        if (msg := check_video_path(video, video_root)) is not None:
            issues.append(issue(f"video[{i}]", msg))
    if not turns:
        return issues
    human = turns[0].value
    if VIDEO_TAG not in human:
        issues.append(
            issue("conversations[0].value", f"missing the {VIDEO_TAG} tag in the human turn")
        )
    elif human.count(VIDEO_TAG) != len(rec.video):
        issues.append(
            issue(
                "conversations[0].value",
                f"{human.count(VIDEO_TAG)} {VIDEO_TAG} tags for {len(rec.video)} video(s)",
            )
        )
    return issues


def _check_record(
    raw: Any,
    index: int,
    file: str,
    file_task: str | None,
    catalog: PromptCatalog,
    video_root: Path | None,
    split: str,
) -> tuple[Sample | None, list[Issue]]:
    def issue(fld: str | None, msg: str) -> Issue:
        return Issue(file, index, fld, msg)

    if not isinstance(raw, dict):
        return None, [issue(None, f"expected a record object, got {type(raw).__name__}")]
    try:
        rec = AnnotationRecord.model_validate(raw)
    except ValidationError as exc:
        return None, [issue(_field_path(e["loc"]), e["msg"]) for e in exc.errors()]

    issues = _structure_issues(rec, video_root, issue)
    turns = rec.conversations
    if not turns:
        return None, issues
    human = turns[0].value
    task = file_task or catalog.task_for(human)
    if task is None:
        issues.append(issue("conversations[0].value", "cannot recognise the task from the prompt"))
        return None, issues
    if len(turns) < 2:
        return None, issues
    answer = turns[1].value
    kind = get_task(task).kind
    if (msg := check_answer_format(kind, answer)) is not None:
        issues.append(issue("conversations[1].value", f"{task} answer: {msg}"))
    if issues:
        return None, issues
    sample = Sample(
        task, strip_video_tag(human), answer.strip(), rec.video[0], rec.source, file, index, split
    )
    return sample, []


def _check_prompts(samples: list[Sample], file: str) -> list[Issue]:
    """Every record of one task in one file must carry the same prompt (the first one seen)."""
    first: dict[str, Sample] = {}
    issues = []
    for s in samples:
        ref = first.setdefault(s.task, s)
        if s.prompt != ref.prompt:
            issues.append(
                Issue(
                    file,
                    s.index,
                    "conversations[0].value",
                    f"{s.task} prompt differs from the one in record {ref.index}",
                )
            )
    return issues


def check_file(
    path: Path,
    video_root: Path | None = None,
    catalog: PromptCatalog | None = None,
) -> tuple[AnnotationFile, list[Issue]]:
    """Check one file record by record.

    Returns:
        The file with its *good* samples, and every issue. Callers that must not half-load
        (:func:`validate_file`, :func:`load_annotations`) discard the samples when there are issues;
        :func:`collect_samples` keeps them and reports the bad records.
    """
    file = str(path)
    catalog = catalog or PromptCatalog()
    info = parse_file_name(path)
    ann = AnnotationFile(path, info)
    try:
        records = read_json_list(path)
    except ValueError as exc:
        return ann, [Issue(file, None, None, str(exc).removeprefix(f"{file}: "))]
    if not records:
        return ann, [Issue(file, None, None, "file holds no records")]
    issues = []
    for i, raw in enumerate(records):
        sample, found = _check_record(raw, i, file, info.task, catalog, video_root, info.split)
        issues.extend(found)
        if sample is not None:
            ann.samples.append(sample)
    prompt_issues = _check_prompts(ann.samples, file)
    bad = {i.index for i in prompt_issues}
    ann.samples = [s for s in ann.samples if s.index not in bad]
    return ann, issues + prompt_issues


def validate_file(
    path: Path,
    video_root: Path | None = None,
    catalog: PromptCatalog | None = None,
) -> tuple[AnnotationFile | None, list[Issue]]:
    """Validate one file; returns the loaded file only when it has no issue."""
    ann, issues = check_file(path, video_root, catalog)
    return (None, issues) if issues else (ann, [])


def _learn_catalog(paths: list[Path]) -> PromptCatalog:
    """Learn prompts from the single-task files among ``paths`` (first record's prompt)."""
    catalog = PromptCatalog()
    for path in paths:
        info = parse_file_name(path)
        if info.task is None:
            continue
        try:
            records = read_json_list(path)
            catalog.add(info.task, records[0]["conversations"][0]["value"])
        except (ValueError, LookupError, TypeError):
            continue  # reported when the file itself is validated
    return catalog


def validate_paths(
    paths: list[str | Path],
    video_root: str | Path | None = None,
    catalog: PromptCatalog | None = None,
) -> tuple[ValidationReport, list[AnnotationFile]]:
    """Validate files and folders of annotation files.

    Task prompts learned from the single-task files given (plus ``catalog``) recognise the tasks
    of records in group files.

    Returns:
        The report (counts summed over all files) and the files that were fully valid.
    """
    files = expand_paths(paths)
    root = Path(video_root) if video_root is not None else None
    learned = _learn_catalog(files)
    if catalog is not None:
        for task, prompt in catalog.as_dict().items():
            learned.add(task, prompt)
    report = ValidationReport(files=len(files))
    loaded = []
    per_task: Counter[str] = Counter()
    for path in files:
        ann, issues = validate_file(path, root, learned)
        report.errors.extend(issues)
        if ann is not None:
            loaded.append(ann)
            report.records += len(ann.samples)
            per_task.update(s.task for s in ann.samples)
    report.per_task = dict(per_task)
    if not files:
        report.errors.append(Issue(str(paths), None, None, "no annotation files found"))
    return report, loaded


def load_annotations(
    paths: list[str | Path],
    video_root: str | Path | None = None,
    catalog: PromptCatalog | None = None,
) -> list[AnnotationFile]:
    """Load annotation files, all or nothing.

    Raises:
        AnnotationError: listing every problem in every file.
    """
    report, loaded = validate_paths(paths, video_root, catalog)
    if not report.valid:
        raise AnnotationError(report.errors)
    return loaded


def collect_samples(
    paths: list[str | Path],
    catalog: PromptCatalog | None = None,
) -> tuple[list[AnnotationFile], list[Issue]]:
    """Load every good record of every file and report the bad ones (for batch jobs).

    Unlike :func:`load_annotations`, one bad record does not drop its file: jobs must lose nothing
    that is good, and list what they skipped.
    """
    files = expand_paths(paths)
    learned = _learn_catalog(files)
    for task, prompt in (catalog.as_dict() if catalog else {}).items():
        learned.add(task, prompt)
    loaded, issues = [], []
    for path in files:
        ann, found = check_file(path, None, learned)
        loaded.append(ann)
        issues.extend(found)
    if not files:
        issues.append(Issue(str(paths), None, None, "no annotation files found"))
    return loaded, issues


def catalog_from_files(files: list[AnnotationFile]) -> PromptCatalog:
    """The prompt catalog of loaded files (first prompt per task)."""
    catalog = PromptCatalog()
    for f in files:
        for s in f.samples:
            if s.task not in catalog:
                catalog.add(s.task, s.prompt)
    return catalog
