"""The upstream CrashChat annotation format: file names, records, reading and writing.

A file is a JSON list of records::

    {"video": ["videos/cap_21_008073.mp4"],
     "conversations": [{"from": "human", "value": "<video>\\n<prompt>"},
                       {"from": "gpt", "value": "1.9 - 4.0 seconds"}],
     "source": "MM-AU-CAP"}

File names are ``crashchat_<dataset>_<task>_<split>.json``, with upstream's task spelling
(``cause_reasoning``) or a group name (``linguistic_centric``, ``perception_centric``,
``heterogeneous``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crashchat.data.prompts import VIDEO_TAG, strip_video_tag
from crashchat.data.tasks import FILE_NAME_TO_TASK, GROUP_FILE_NAMES, get_task

SPLITS = ("train", "val", "test")
# Upstream ships its heterogeneous validation file as "heterogeneousl_val".
_FILE_NAME_ALIASES = {"heterogeneousl": "heterogeneous"}


class Turn(BaseModel):
    """One conversation turn."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", description="'human' or 'gpt'.")
    value: str = Field(description="Turn text; the human turn starts with the <video> tag.")


class AnnotationRecord(BaseModel):
    """One upstream annotation record (structure only; task rules are checked in validation)."""

    model_config = ConfigDict(extra="forbid")

    video: list[str] = Field(min_length=1, description="Video paths relative to the video root.")
    conversations: list[Turn] = Field(description="Exactly [human, gpt].")
    source: str | None = Field(default=None, description="Dataset the clip comes from.")
    id: str | int | None = Field(default=None, description="Optional record id (tolerated).")


@dataclass(frozen=True)
class FileNameInfo:
    """What an annotation file's name says.

    Attributes:
        dataset: The part between ``crashchat_`` and the task (``dada_video_total``, ``synth``).
        name: The task or group spelling found in the name (``cause_reasoning``, ``heterogeneous``).
        task: Registry key when the file holds one task, else ``None`` (group file).
        group: Group name for group files, else ``None``.
        split: ``train``, ``val``, ``test`` or ``unspecified``.
    """

    dataset: str
    name: str | None
    task: str | None
    group: str | None
    split: str


def parse_file_name(path: str | Path) -> FileNameInfo:
    """Read task, group and split from an annotation file name (tolerant of other prefixes)."""
    stem = Path(path).stem
    parts = stem.split("_")
    split = "unspecified"
    if parts and parts[-1] in SPLITS:
        split = parts.pop()
    rest = "_".join(parts)
    candidates = sorted(
        list(FILE_NAME_TO_TASK) + list(GROUP_FILE_NAMES) + list(_FILE_NAME_ALIASES),
        key=len,
        reverse=True,
    )
    for name in candidates:
        if rest == name or rest.endswith("_" + name):
            dataset = rest[: -len(name)].rstrip("_")
            dataset = dataset.removeprefix("crashchat").lstrip("_")
            canonical = _FILE_NAME_ALIASES.get(name, name)
            if canonical in FILE_NAME_TO_TASK:
                return FileNameInfo(dataset, canonical, FILE_NAME_TO_TASK[canonical], None, split)
            return FileNameInfo(dataset, canonical, None, canonical, split)
    return FileNameInfo(rest.removeprefix("crashchat").lstrip("_"), None, None, None, split)


def annotation_file_name(dataset: str, name: str, split: str) -> str:
    """Build an upstream-style file name; ``name`` is a task key or a group name."""
    if name not in GROUP_FILE_NAMES:
        name = get_task(name).file_name
    return f"crashchat_{dataset}_{name}_{split}.json"


@dataclass
class Sample:
    """One validated annotation record, resolved to its task.

    Attributes:
        task: Task registry key.
        prompt: The prompt without the ``<video>`` tag.
        answer: The ground-truth answer text.
        video: Video path as written in the annotation (relative to the video root).
        source: Dataset of origin.
        file: Annotation file it came from.
        index: Record index in that file.
        split: Split from the file name.
    """

    task: str
    prompt: str
    answer: str
    video: str
    source: str | None
    file: str
    index: int
    split: str

    @property
    def record_id(self) -> str:
        """Stable id of (clip, task, answer): the same record in two files has the same id."""
        digest = hashlib.sha1(f"{self.video}\x00{self.task}\x00{self.answer}".encode()).hexdigest()
        return f"{self.task}:{Path(self.video).stem}:{digest[:10]}"


def make_record(video: str, prompt: str, answer: str, source: str | None) -> dict[str, Any]:
    """Build an upstream-format record (adds the ``<video>`` tag to the prompt)."""
    record: dict[str, Any] = {
        "video": [video],
        "conversations": [
            {"from": "human", "value": f"{VIDEO_TAG}\n{strip_video_tag(prompt)}"},
            {"from": "gpt", "value": answer},
        ],
    }
    if source is not None:
        record["source"] = source
    return record


def write_annotation_file(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write records as upstream does (a JSON list); the write is atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_json_list(path: str | Path) -> list[Any]:
    """Read a JSON list, raising ``ValueError`` that names the file on any problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


@dataclass
class AnnotationFile:
    """A loaded, fully valid annotation file."""

    path: Path
    info: FileNameInfo
    samples: list[Sample] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        """Content hash of the file, for manifests."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()
