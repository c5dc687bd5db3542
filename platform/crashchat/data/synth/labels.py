"""Ground-truth answers and prompts for synthetic scenes.

Answers follow from the scene: who hits whom, the drawn cause, the cue time and the crash interval.
Prompts are this platform's own wording, in the style of each CrashChat task.
"""

from __future__ import annotations

from crashchat.data.answer_parsing import format_interval, format_timestamp
from crashchat.data.synth.scenario import Scene

PROMPTS: dict[str, str] = {
    "crash_recognition": (
        "You are a traffic safety engineer. Watch this traffic video and decide whether any "
        "collision happens in it. Reply with only 'Yes' or 'No'."
    ),
    "crash_description": (
        "You are a traffic safety analyst. Describe the collision in the video in one short "
        "sentence of the form [subject] [verb] [object], for example 'car hits a truck'. If "
        "nothing collides, reply exactly 'no collision.'"
    ),
    "causal_reasoning": (
        "You are a traffic safety analyst. Explain in one short sentence the most likely cause of "
        "the accident in the video. If there is no accident, reply exactly 'No accident, no cause.'"
    ),
    "prevention_reasoning": (
        "You are a traffic safety analyst. Say what the road users should have done to prevent "
        "the accident in the video. If there is no accident, reply exactly 'No accident, no "
        "prevention needed.'"
    ),
    "pre_crash_localization": (
        "You are a traffic safety analyst. Find the moment when the first visible sign of the "
        "coming crash appears, such as a vehicle starting to speed, swerve or run a light. Reply "
        "as 'timestamp seconds', for example '2.4 seconds'."
    ),
    "crash_localization": (
        "You are a traffic safety analyst. Find the time range of the crash, from the first "
        "contact until the vehicles come to rest. Reply as 'start - end seconds', for example "
        "'1.9 - 3.0 seconds'."
    ),
}

NO_COLLISION = "no collision."
NO_CAUSE = "No accident, no cause."
NO_PREVENTION = "No accident, no prevention needed."

_CAUSE_TEXT = {
    "speeding": "The {s} is speeding and cannot stop before the {o} ahead.",
    "red_light": "The {s} runs the red light.",
    "lane_change": "The {s} changes lanes unsafely into the {o}.",
    "loss_of_control": "The {s} is out of control.",
}
_PREVENTION_TEXT = {
    "speeding": (
        "The {s} should keep to the speed limit and keep a safe distance from the vehicle ahead. "
        "Drivers should slow down early when traffic ahead is slower."
    ),
    "red_light": (
        "The {s} should stop at the stop line when the light is red. Drivers should watch the "
        "traffic light and cross traffic before entering the intersection."
    ),
    "lane_change": (
        "The {s} should check the mirrors and blind spot and signal before changing lanes. "
        "Drivers should only change lanes when the gap is large enough."
    ),
    "loss_of_control": (
        "The {s} should drive at a speed it can control and stay in its lane. Drivers should "
        "avoid distraction and fatigue."
    ),
}


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def answers_for(scene: Scene) -> dict[str, str]:
    """The six ground-truth answers of a scene (localization tasks only for crash scenes)."""
    if not scene.crash:
        return {
            "crash_recognition": "No",
            "crash_description": NO_COLLISION,
            "causal_reasoning": NO_CAUSE,
            "prevention_reasoning": NO_PREVENTION,
        }
    assert scene.subject and scene.obj and scene.cause
    assert (
        scene.cue_time is not None and scene.crash_start is not None and scene.crash_end is not None
    )
    s, o = scene.subject, scene.obj
    return {
        "crash_recognition": "Yes",
        "crash_description": f"{s} hits {_article(o)} {o}",
        "causal_reasoning": _CAUSE_TEXT[scene.cause].format(s=s, o=o),
        "prevention_reasoning": _PREVENTION_TEXT[scene.cause].format(s=s, o=o),
        "pre_crash_localization": format_timestamp(scene.cue_time),
        "crash_localization": format_interval(scene.crash_start, scene.crash_end),
    }


def all_label_text() -> list[str]:
    """Every sentence the generator can emit (used to train the tiny tokenizer)."""
    from crashchat.data.synth.scenario import ACTOR_KINDS, CAUSES

    texts = [*list(PROMPTS.values()), NO_COLLISION, NO_CAUSE, NO_PREVENTION, "Yes", "No"]
    for s in ACTOR_KINDS:
        for o in ACTOR_KINDS:
            texts.append(f"{s} hits {_article(o)} {o}")
            for cause in CAUSES:
                texts.append(_CAUSE_TEXT[cause].format(s=s, o=o))
                texts.append(_PREVENTION_TEXT[cause].format(s=s, o=o))
    texts += [format_interval(a / 10, (a + 13) / 10) for a in range(0, 400, 7)]
    texts += [format_timestamp(a / 10) for a in range(0, 400, 3)]
    return texts
