"""Synthetic crash videos whose labels follow from what is drawn."""

from crashchat.data.synth.dataset import SynthResult, generate_dataset, plan_scenes
from crashchat.data.synth.labels import PROMPTS, answers_for

__all__ = ["PROMPTS", "SynthResult", "answers_for", "generate_dataset", "plan_scenes"]
