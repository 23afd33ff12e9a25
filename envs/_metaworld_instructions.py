"""Natural-language instructions for Meta-World task names ("drawer-open-v3" -> "open the drawer")."""

from __future__ import annotations

# Hand-written for the MT10 tasks: what the scripted expert actually does in each.
MT10_INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the goal position with the gripper",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

# Words of Meta-World names that are actions; the words before one name the object.
_VERBS = (
    "reach", "push", "pick", "place", "open", "close", "press", "pull", "insert", "unplug", "turn",
    "lock", "unlock", "slide", "sweep", "assemble", "disassemble", "hammer", "stick",
)  # fmt: skip
_MODIFIERS = {"side": "from the side", "topdown": "from the top", "wall": "past the wall", "back": "backwards"}


def instruction_for(task_name: str) -> str:
    """The instruction for a Meta-World task name, hand-written for MT10, else built from the name.

    Fallback rule: drop the version suffix, take the first verb as the action, the words before it as
    the object and known trailing words as modifiers: "faucet-open-v3" -> "open the faucet",
    "handle-press-side-v3" -> "press the handle from the side"; names with no verb are read as words.
    """
    if task_name in MT10_INSTRUCTIONS:
        return MT10_INSTRUCTIONS[task_name]
    words = task_name.rsplit("-v", 1)[0].split("-")
    verb_at = next((i for i, w in enumerate(words) if w in _VERBS), None)
    if verb_at is None:
        return " ".join(_MODIFIERS.get(w, w) for w in words)
    obj = " ".join(words[:verb_at])
    rest = [_MODIFIERS.get(w, w) for w in words[verb_at + 1 :]]
    sentence = words[verb_at] + (f" the {obj}" if obj else "")
    return " ".join([sentence, *rest])


__all__ = ["MT10_INSTRUCTIONS", "instruction_for"]
